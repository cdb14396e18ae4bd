import random
from typing import Optional

import numpy as np
import torch
from mmengine.dist import get_world_size
from mmengine.hooks import Hook
from mmengine.registry import HOOKS


@HOOKS.register_module()
class RNGStateHook(Hook):
    """Save the random number generators' state with each checkpoint, restore it on resume.

    mmengine re-seeds on resume, so a resumed run draws different random numbers
    (dropout, DINO's denoising noise, augmentation in the main process) than the
    run it continues. With this hook, resuming on one process continues exactly.
    In a distributed run only rank 0 saves checkpoints, so the state of the other
    ranks cannot be restored; the hook says so and leaves their seeding as it is.
    """

    priority = 'VERY_LOW'

    def __init__(self) -> None:
        self._state_to_restore: Optional[dict] = None

    def before_save_checkpoint(self, runner, checkpoint: dict) -> None:
        checkpoint['rng_state'] = dict(
            torch=torch.get_rng_state(),
            numpy=np.random.get_state(),
            python=random.getstate())

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        # mmengine may re-seed after loading; restore just before training goes on.
        self._state_to_restore = checkpoint.get('rng_state')
        if self._state_to_restore is None:
            runner.logger.warning('RNGStateHook: the checkpoint has no rng_state; '
                                  'random numbers will not continue exactly.')

    def before_train(self, runner) -> None:
        state, self._state_to_restore = self._state_to_restore, None
        if state is None:
            return
        if get_world_size() > 1:
            runner.logger.warning('RNGStateHook: random state is restored only '
                                  'in single-process runs.')
            return
        torch.set_rng_state(state['torch'])
        np.random.set_state(state['numpy'])
        random.setstate(state['python'])
