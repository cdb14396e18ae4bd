# tiny_iter_checkpoints.py, killed (SIGKILL) while it writes the checkpoint of
# iteration 4 (tests/plugins/checkpoint_crash.py; needs tests/plugins on PYTHONPATH).
_base_ = './tiny_iter_checkpoints.py'

custom_imports = dict(imports=['lors_mmdet', 'checkpoint_crash'], allow_failed_imports=False)
custom_hooks = [dict(type='RNGStateHook'), dict(type='KillDuringCheckpointSaveHook', at_iter=4)]
