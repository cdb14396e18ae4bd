# mmdet's default runtime, with checkpoints that a crash cannot take away
# (AtomicCheckpointHook: atomic writes, outdated checkpoints deleted only after the
# new one is saved) and exact resumption (RNGStateHook saves the random number
# generators in each checkpoint). Needs custom_imports=['lors_mmdet'] in the config.
# A config that sets its own custom_hooks replaces this list: keep RNGStateHook in it.
_base_ = 'mmdet::_base_/default_runtime.py'

default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='RNGStateHook')]
