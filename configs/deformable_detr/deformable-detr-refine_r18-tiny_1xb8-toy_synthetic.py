# A small Deformable-DETR with box refinement for CPU on the synthetic shapes
# data set (python tools/generate_synthetic_coco.py): the toy DETR of
# ../_base_/models/detr-4scale_r18-tiny_toy.py (tiny ResNet-18 pretrained on the shapes,
# strides 8-64, 2 encoder and 3 decoder layers, 50 queries; the same as the
# toy DINO) with Deformable-DETR's position encoding, losses and lr
# multipliers.
_base_ = [
    '../_base_/models/detr-4scale_r18-tiny_toy.py',
    '../_base_/schedules/toy_synthetic.py'
]

model = dict(
    type='DeformableDETR',
    as_two_stage=False,
    positional_encoding=dict(
        num_feats=128, normalize=True, offset=-0.5),
    bbox_head=dict(
        type='DeformableDETRHead',
        num_classes=6,
        embed_dims=256,
        sync_cls_avg_factor=True,
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=2.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)))

optim_wrapper = dict(
    clip_grad=dict(max_norm=0.1),
    paramwise_cfg=dict(
        custom_keys={
            'sampling_offsets': dict(lr_mult=0.1),
            'reference_points': dict(lr_mult=0.1)
        }))

# Deformable-DETR has no denoising queries and trains faster per iteration
# than the toy DINO: 600 iterations take about the time of DINO's 500
# (docs/experiments/log.md).
max_iters = 600
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
