import random
from typing import List, Optional

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


@HOOKS.register_module()
class FreezeLorsSharedHook(Hook):
    """Hold the shared weights of every LORS stack fixed for the first part of a
    run: the private residuals (and everything outside the stacks) learn first,
    then all of it. For a fine-tune after compression, where the shared weights
    are a fitted starting point the residuals are measured against.

    While frozen, the shared weights' gradients are zero (gradient clipping sees
    none) and their values are put back after each step (weight decay does not
    move them either). When they are released, the optimizer's state of those
    weights is dropped, so that their optimization starts as at the beginning of a
    run (AdamW's first steps bias-corrected, not scaled up by moments that saw only
    zeros). It works alike in distributed runs (every rank does the same), in
    epoch- and iteration-based runs (decided by the run's iteration) and on resume.

    Args:
        iters: freeze during the run's iterations ``[0, iters)``.
        fraction: instead, during that fraction in (0, 1) of the run's
            iterations (``runner.max_iters``, which epoch-based runs have too).
    """

    priority = 'NORMAL'  # before the checkpoint hooks (VERY_LOW) save the weights

    def __init__(self, iters: Optional[int] = None,
                 fraction: Optional[float] = None) -> None:
        if (iters is None) == (fraction is None):
            raise ValueError('FreezeLorsSharedHook takes exactly one of iters and '
                             f'fraction, got iters={iters!r}, fraction={fraction!r}')
        if iters is not None and (not isinstance(iters, int) or isinstance(iters, bool)
                                  or iters < 1):
            raise ValueError(f'FreezeLorsSharedHook: iters must be a positive int, '
                             f'got {iters!r}')
        if fraction is not None and not (isinstance(fraction, (int, float))
                                         and not isinstance(fraction, bool)
                                         and 0 < fraction < 1):
            raise ValueError(f'FreezeLorsSharedHook: fraction must be in (0, 1), got '
                             f'{fraction!r}')
        self.iters, self.fraction = iters, fraction
        self._params: List[torch.nn.Parameter] = []
        self._saved: Optional[List[torch.Tensor]] = None
        self._handles: list = []

    def frozen_iters(self, runner) -> int:
        """The number of iterations the shared weights stay fixed."""
        if self.iters is not None:
            return self.iters
        return max(1, round(self.fraction * runner.max_iters))

    def before_train(self, runner) -> None:
        from mmengine.model import is_model_wrapper

        from lors_mmdet.lors import find_lors_stacks
        model = runner.model.module if is_model_wrapper(runner.model) else runner.model
        self._params = [p for _, stack in find_lors_stacks(model)
                        for p in stack.parameters()]
        if not self._params:
            raise ValueError('FreezeLorsSharedHook: the model has no LORS stack '
                             '(no model.lors), so it has no shared weights to freeze')

    def before_train_iter(self, runner, batch_idx: int, data_batch=None) -> None:
        if runner.iter < self.frozen_iters(runner):
            if self._saved is None:
                self._saved = [p.detach().clone() for p in self._params]
                self._handles = [p.register_hook(torch.zeros_like)
                                 for p in self._params]
        elif self._saved is not None:
            self._release()
            self._drop_optimizer_state(runner)
            runner.logger.info(f'FreezeLorsSharedHook: the shared weights train from '
                               f'iteration {runner.iter} on')

    def after_train_iter(self, runner, batch_idx: int, data_batch=None,
                         outputs=None) -> None:
        if self._saved is not None:
            with torch.no_grad():
                for param, value in zip(self._params, self._saved):
                    param.copy_(value)

    def after_train(self, runner) -> None:
        self._release()

    def _release(self) -> None:
        for handle in self._handles:
            handle.remove()
        self._handles, self._saved = [], None

    def _drop_optimizer_state(self, runner) -> None:
        from mmengine.optim import OptimWrapperDict
        wrappers = (runner.optim_wrapper.values()
                    if isinstance(runner.optim_wrapper, OptimWrapperDict)
                    else [runner.optim_wrapper])
        for wrapper in wrappers:
            for param in self._params:
                wrapper.optimizer.state.pop(param, None)
