# A small DINO-4scale for CPU on the synthetic shapes data set
# (python tools/generate_synthetic_coco.py): the toy DETR of
# ../_base_/models/detr-4scale_r18-tiny_toy.py (tiny ResNet-18 pretrained on the shapes,
# strides 8-64, 2 encoder and 3 decoder layers, 50 queries) with DINO's
# two-stage query selection, box refinement, denoising queries and losses.
_base_ = [
    '../_base_/models/detr-4scale_r18-tiny_toy.py',
    '../_base_/schedules/toy_synthetic.py'
]

model = dict(
    type='DINO',
    as_two_stage=True,
    positional_encoding=dict(
        num_feats=128,
        normalize=True,
        offset=0.0,
        temperature=20),
    bbox_head=dict(
        type='DINOHead',
        num_classes=6,
        embed_dims=256,
        sync_cls_avg_factor=True,
        loss_cls=dict(
            type='FocalLoss',
            use_sigmoid=True,
            gamma=2.0,
            alpha=0.25,
            loss_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    dn_cfg=dict(
        label_noise_scale=0.5,
        box_noise_scale=1.0,
        group_cfg=dict(dynamic=True, num_groups=None, num_dn_queries=30)))

optim_wrapper = dict(clip_grad=dict(max_norm=0.1))
