# The demo of `make demo` (tools/demo.sh): the toy LORS-AdaMixer on the synthetic
# shapes, started from the pretrained toy backbone the repository ships
# (checkpoints/toy/, written by tools/pretrain_toy_backbone.py) and trained for
# 500 iterations instead of 1600: with a backbone that already tells the shapes
# apart, the decoder learns the classes in a fraction of the from-scratch
# schedule. No validation during training: the demo evaluates once, after it.
_base_ = './lors-adamixer_r18-tiny_1xb16-toy_synthetic.py'

model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='checkpoints/toy/resnet18-tiny_shapes.pth')))

max_iters = 500
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
val_cfg = None
val_dataloader = None
val_evaluator = None
param_scheduler = [
    dict(type='LinearLR', start_factor=0.01, by_epoch=False, begin=0, end=50),
    dict(
        type='MultiStepLR',
        by_epoch=False,
        begin=0,
        end=max_iters,
        milestones=[int(max_iters * 0.8)],
        gamma=0.1)
]
default_hooks = dict(
    logger=dict(interval=25), checkpoint=dict(interval=max_iters))
