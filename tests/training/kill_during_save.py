"""Run tools/train.py and SIGKILL it from inside the `latest_model.pth` save of global iteration KILL_AT_IT.

    python tests/training/kill_during_save.py KILL_AT_IT <tools/train.py arguments...>

The kill lands after part of the new file went into the atomic save's temporary file, as a real `kill -9` (or a
node loss) during a save would: `latest_model.pth` keeps the previous iteration's checkpoint and a
`.latest_model.pth.*.tmp` stays behind. Only the timing is controlled; the kill itself is a real SIGKILL.
"""
import os
import runpy
import signal
import sys
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO_ROOT))

from pcdet.training import hooks  # noqa: E402  (CheckpointHook saves through hooks.save_checkpoint)
from pcdet.training.checkpointing import LATEST_NAME  # noqa: E402
from pcdet.utils.file_utils import atomic_write  # noqa: E402


def main():
    kill_at_it = int(sys.argv[1])
    real_save = hooks.save_checkpoint

    def save_or_die(state, filename):
        if Path(filename).name == LATEST_NAME and state['it'] == kill_at_it:
            with atomic_write(filename, 'wb') as handle:
                handle.write(b'PK\x03\x04 first bytes of a checkpoint')
                handle.flush()
                # the whole job, DataLoader workers included, as `kill -9` of a job (or a scheduler) does: a lone
                # SIGKILL of the main process leaves its workers blocked on a full pipe forever. The test starts
                # this script in its own session, so the group is this run alone.
                os.killpg(os.getpgid(0), signal.SIGKILL)
        return real_save(state, filename)

    hooks.save_checkpoint = save_or_die
    sys.argv = [str(REPO_ROOT / 'tools' / 'train.py')] + sys.argv[2:]
    runpy.run_path(sys.argv[0], run_name='__main__')


if __name__ == '__main__':
    main()
