# A small AdaMixer for CPU: trains on the synthetic shapes data set
# (python tools/generate_synthetic_coco.py); results: docs/experiments/log.md.
# Tiny ResNet-18 (16 base channels, no pretraining), 64-d queries, 30 queries,
# 3 stages (each stage is matched and trained on its own, as in AdaMixer), the
# mixing sizes scaled down (G=4, P_in=16, P_out=32). Only the sizes, the
# schedule and the learning rate differ from the COCO configs: architecture,
# initialisation, losses and matching are AdaMixer's.
# Batch 16: on 2 CPU cores it trains on more images per second than batch 8;
# batch 32 at lr 1.5e-3 for the same time learned less (fewer steps).
_base_ = [
    '../_base_/models/adamixer_r50.py', '../_base_/schedules/toy_synthetic.py'
]

num_classes = 6
num_stages = 3
num_query = 30
content_dim = 64
feat_channels = 64

model = dict(
    backbone=dict(
        depth=18,
        base_channels=16,
        frozen_stages=-1,
        norm_eval=False,
        init_cfg=None),
    neck=dict(
        in_channels=[16, 32, 64, 128],
        out_channels=feat_channels,
        num_groups=16),
    rpn_head=dict(num_query=num_query, content_dim=content_dim),
    roi_head=dict(
        num_stages=num_stages,
        stage_loss_weights=[1] * num_stages,
        content_dim=content_dim,
        feat_channels=feat_channels,
        n_groups=4,
        in_points=16,
        out_points=32,
        bbox_head=dict(
            num_classes=num_classes, num_heads=4, feedforward_channels=256)),
    train_cfg=dict(rcnn=[
        {{_base_.adamixer_stage_train_cfg}} for _ in range(num_stages)
    ]),
    test_cfg=dict(rcnn=dict(max_per_img=num_query)))

train_dataloader = dict(batch_size=16)

# The class of the boxes is learned late in set-prediction training (after
# the boxes): 1600 iterations (25.6k images, 26 epochs).
max_iters = 1600
train_cfg = dict(max_iters=max_iters, val_interval=max_iters)
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
default_hooks = dict(checkpoint=dict(interval=max_iters))
