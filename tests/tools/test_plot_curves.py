"""tools/plot_curves.py reads back what tensorboardX wrote and draws it."""
import importlib.util
from pathlib import Path

import pytest

from pcdet.utils.tb_events import read_scalars

TOOL = Path(__file__).resolve().parents[2] / 'tools' / 'plot_curves.py'


def load_tool():
    spec = importlib.util.spec_from_file_location('plot_curves_tool', TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_scalars_round_trip_and_png(tmp_path):
    from tensorboardX import SummaryWriter
    writer = SummaryWriter(log_dir=str(tmp_path / 'tb'))
    for step in range(50):
        writer.add_scalar('train/loss', 1.0 / (step + 1), step)
        if step % 10 == 0:
            writer.add_scalar('dgpl/beta', step / 50, step // 10)
    writer.close()
    series = read_scalars(tmp_path / 'tb')
    assert [s for s, _ in series['train/loss']] == list(range(50))
    assert series['train/loss'][3][1] == pytest.approx(0.25)
    assert series['dgpl/beta'] == [(i, pytest.approx(i * 10 / 50)) for i in range(5)]
    tool = load_tool()
    out = tool.main(['--logdir', str(tmp_path / 'tb'), '--out', str(tmp_path / 'c.png'), '--smooth', '5'])
    assert out.read_bytes()[:8] == b'\x89PNG\r\n\x1a\n'
    with pytest.raises(KeyError, match='available'):
        tool.main(['--logdir', str(tmp_path / 'tb'), '--out', str(tmp_path / 'd.png'), '--tags', 'nope'])
    kept = tool.main(['--logdir', str(tmp_path / 'tb'), '--out', str(tmp_path / 'e.png'), '--tags', 'nope',
                      'dgpl/beta', '--skip_missing'])
    assert kept.is_file()
    with pytest.raises(FileNotFoundError):
        read_scalars(tmp_path / 'empty')
