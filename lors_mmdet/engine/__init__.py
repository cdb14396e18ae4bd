"""Runtime pieces for mmengine: hooks, model wrappers, launch-time config checks."""
from .atomic_checkpoint import (AtomicCheckpointHook, AtomicLocalBackend,
                                checkpoint_problem, find_resumable_checkpoint,
                                select_resume_checkpoint)
from .hooks import RNGStateHook
from .model_wrappers import DeviceAwareDistributedDataParallel
from .runtime import (adapt_cfg_to_machine, check_data_paths, check_pretrained_paths,
                      load_tool_config, use_atomic_checkpoints)

__all__ = ['AtomicCheckpointHook', 'AtomicLocalBackend', 'checkpoint_problem',
           'find_resumable_checkpoint', 'select_resume_checkpoint', 'RNGStateHook',
           'DeviceAwareDistributedDataParallel', 'adapt_cfg_to_machine', 'check_data_paths',
           'check_pretrained_paths', 'load_tool_config', 'use_atomic_checkpoints']
