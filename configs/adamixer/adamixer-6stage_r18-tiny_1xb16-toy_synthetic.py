# The toy AdaMixer with the paper's decoder shape, the plain half of the
# 6-stage accuracy study (docs/accuracy.md): 6 stages and the mixing sizes of
# the published LORS-AdaMixer scaled down with the content dimension
# (256 -> 64): G=2 groups of c=32 channels (COCO: 2 of 128), P_in=16 and
# P_out=32 sampling points (COCO: 64, 128), feed-forward 8x the content
# dimension (COCO: 2048 = 8 x 256). Started from the shipped pretrained toy
# backbone, as COCO models start from an ImageNet backbone. Its LORS twin:
# ../lors_adamixer/lors-adamixer-6stage_r18-tiny_1xb16-toy_synthetic.py.
_base_ = './adamixer_r18-tiny_1xb16-toy_synthetic.py'

num_stages = 6
model = dict(
    backbone=dict(
        init_cfg=dict(
            _delete_=True,
            type='Pretrained',
            checkpoint='checkpoints/toy/resnet18-tiny_shapes.pth')),
    roi_head=dict(
        num_stages=num_stages,
        stage_loss_weights=[1] * num_stages,
        n_groups=2,
        in_points=16,
        out_points=32,
        bbox_head=dict(feedforward_channels=512)),
    train_cfg=dict(rcnn=[
        {{_base_.adamixer_stage_train_cfg}} for _ in range(num_stages)
    ]))

# Learning curves from one run: validation at 200, 400 and 600 iterations
# (3.2k, 6.4k and 9.6k images), one lr step at 480. With 6 stages an
# iteration costs about twice the 3-stage toy's, so 600 iterations keep a run
# near 20 minutes on one core.
max_iters = 600
train_cfg = dict(max_iters=max_iters, val_interval=200)
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
# a checkpoint at every validation, all kept: a killed run resumes from the
# last one, and the diagnostics read the weights along the curve
default_hooks = dict(logger=dict(interval=25), checkpoint=dict(interval=200))
