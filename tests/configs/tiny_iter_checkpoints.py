# tiny_deformable_detr_synthetic.py trained by iterations with a checkpoint every
# 2 of 6 iterations, only the newest one kept, and no validation: the checkpoint
# tests' run, a few seconds of training.
_base_ = './tiny_deformable_detr_synthetic.py'

train_dataloader = dict(num_workers=1, persistent_workers=False,
                        sampler=dict(type='InfiniteSampler', shuffle=True))
val_dataloader = None
val_evaluator = None
val_cfg = None
test_dataloader = None
test_evaluator = None
test_cfg = None
train_cfg = dict(_delete_=True, type='IterBasedTrainLoop', max_iters=6)
param_scheduler = [
    dict(type='MultiStepLR', by_epoch=False, begin=0, end=6, milestones=[4], gamma=0.1)
]
default_hooks = dict(
    checkpoint=dict(by_epoch=False, interval=2, max_keep_ckpts=1))
log_processor = dict(by_epoch=False)
