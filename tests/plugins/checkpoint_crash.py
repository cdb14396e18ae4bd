"""Test-only plugin: kill the training process in the middle of writing a checkpoint.

Load it with ``custom_imports=dict(imports=['checkpoint_crash'])`` and
``PYTHONPATH=tests/plugins``, and add ``dict(type='KillDuringCheckpointSaveHook',
at_iter=N)`` to ``custom_hooks``: the checkpoint saved after iteration N gets an
object whose pickling sends SIGKILL to the process, so the process dies while
``torch.save`` is serialising that checkpoint, as under ``kill -9``.
"""
import os
import signal

from mmengine.hooks import Hook
from mmengine.registry import HOOKS


class _KillWhenPickled:
    """Sends SIGKILL to its own process when pickled."""

    def __reduce__(self):
        os.kill(os.getpid(), signal.SIGKILL)


@HOOKS.register_module()
class KillDuringCheckpointSaveHook(Hook):
    """Kill the process while it writes the checkpoint of iteration ``at_iter``.

    Args:
        at_iter: Iteration (1-based, as in ``iter_N.pth``) whose checkpoint kills.
        best_only: Kill only while writing a best checkpoint (the ones mmengine
            saves without optimizer state), not the regular one.
        nth: Kill at the nth of those saves of iteration ``at_iter`` (after a new
            best, mmengine saves the regular checkpoint again: the third save).
    """

    def __init__(self, at_iter: int, best_only: bool = False, nth: int = 1) -> None:
        self.at_iter = at_iter
        self.best_only = best_only
        self.nth = nth

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        if checkpoint['meta']['iter'] != self.at_iter:
            return
        if not self.best_only or 'optimizer' not in checkpoint:
            self.nth -= 1
            if self.nth == 0:
                checkpoint['kill_switch'] = _KillWhenPickled()
