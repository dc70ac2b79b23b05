"""End-to-end tests: the real tools on generated data. They are slow (minutes) and carry the `slow` marker, so
`bash tools/scripts/run_tests.sh -m "not slow"` leaves them out; the default invocation runs them."""


def pytest_configure(config):
    config.addinivalue_line('markers', 'slow: end-to-end runs of the real tools (minutes); deselect with -m "not slow"')
