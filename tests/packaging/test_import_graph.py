"""No import cycles between the modules of `pcdet`, counting imports inside functions too.

A static check (ast, nothing is imported): every `import` / `from ... import` anywhere in a module of `pcdet/`
-- module level, inside functions and methods, under `if` / `try` -- adds an edge from that module to the `pcdet`
module it names: `from .a import b` names `a`, and also `a.b` when that is a submodule; `from . import b` names
the submodule `b` (or the package when `b` is an attribute of its `__init__`). A module that imports a submodule
also runs its parent packages' `__init__`, but those implicit edges are left out: a package `__init__`
re-exporting its own submodules is the normal layout, and Python resolves it. Imports through `importlib`
(the dataset / model registries) are not seen. A cycle fails the test with its edges and line numbers; a lazy,
function-level import that closes a cycle counts too, since it only hides the circle until the call.
"""
import ast
from pathlib import Path

PCDET = Path(__file__).resolve().parents[2] / 'pcdet'


def _module_files(package_dir):
    """{dotted module name: (path, is_package)} for every .py file under `package_dir`."""
    modules = {}
    for path in sorted(package_dir.rglob('*.py')):
        parts = list(path.relative_to(package_dir.parent).with_suffix('').parts)
        is_package = parts[-1] == '__init__'
        if is_package:
            parts = parts[:-1]
        modules['.'.join(parts)] = (path, is_package)
    return modules


def _resolve_relative(module, is_package, level, name):
    base = module.split('.') if is_package else module.split('.')[:-1]
    if level > 1:
        base = base[:len(base) - (level - 1)]
    return '.'.join(base + ([name] if name else []))


def import_graph(package_dir=PCDET):
    """{module: {imported pcdet module: first line number}} over all imports of each module."""
    modules = _module_files(package_dir)
    root = package_dir.name
    graph = {}
    for module, (path, is_package) in modules.items():
        edges = {}

        def add(target, lineno):
            if target != module and target in modules:
                edges.setdefault(target, lineno)

        for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
            if isinstance(node, ast.Import):
                for alias in node.names:
                    add(alias.name, node.lineno)
            elif isinstance(node, ast.ImportFrom):
                target = _resolve_relative(module, is_package, node.level, node.module) if node.level \
                    else node.module
                if not target or target.split('.')[0] != root:
                    continue
                submodules = [f'{target}.{alias.name}' for alias in node.names
                              if f'{target}.{alias.name}' in modules]
                for submodule in submodules:
                    add(submodule, node.lineno)
                if len(submodules) < len(node.names):  # some names are attributes of `target` itself
                    add(target, node.lineno)
        graph[module] = edges
    return graph


def find_cycles(graph):
    """The strongly connected components with more than one module (Tarjan, iterative), each sorted."""
    index, low, on_stack, stack, components = {}, {}, set(), [], []
    counter = 0
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = counter
        counter += 1
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = counter
                    counter += 1
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    components.append(sorted(component))
    return components


def _describe(graph, component):
    members = set(component)
    return '\n'.join(f'  {module} -> {target} (line {line})' for module in component
                     for target, line in sorted(graph[module].items()) if target in members)


def test_pcdet_has_no_import_cycles():
    graph = import_graph()
    assert len(graph) > 50 and 'pcdet.models.build' in graph  # the walk found the package
    cycles = find_cycles(graph)
    assert not cycles, 'import cycles in pcdet:\n' + '\n\n'.join(_describe(graph, c) for c in cycles)


def test_checker_sees_lazy_and_relative_imports(tmp_path):
    """The checker reports a circle closed by a function-level relative import (how the old ones looked)."""
    package = tmp_path / 'pkg'
    (package / 'sub').mkdir(parents=True)
    (package / '__init__.py').write_text('')
    (package / 'sub' / '__init__.py').write_text('from .a import A\n')
    (package / 'sub' / 'a.py').write_text('from ..b import helper\n\nclass A:\n    pass\n')
    (package / 'b.py').write_text('def helper():\n    from .sub import a\n    return a.A\n')
    graph = import_graph(package)
    assert graph['pkg.sub.a'] == {'pkg.b': 1} and graph['pkg.b'] == {'pkg.sub.a': 2}
    assert find_cycles(graph) == [['pkg.b', 'pkg.sub.a']]
