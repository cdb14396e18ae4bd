# A small AdaMixer for CPU: trains on the synthetic shapes data set
# (python tools/generate_synthetic_coco.py) in minutes on 2 cores. Tiny
# ResNet-18 (16 base channels, no pretraining), 64-d queries, 6 stages.
_base_ = [
    '../_base_/datasets/synthetic_coco_detection.py',
    'mmdet::_base_/default_runtime.py'
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

num_classes = 6
num_stages = 6
num_query = 30
content_dim = 64
feat_channels = 64

model = dict(
    type='AdaMixer',
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=32),
    backbone=dict(
        type='ResNet',
        depth=18,
        base_channels=16,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=None),
    neck=dict(
        type='AdaMixerChannelMapping',
        in_channels=[16, 32, 64, 128],
        out_channels=feat_channels,
        num_groups=16),
    rpn_head=dict(
        type='AdaMixerQueryGenerator',
        num_query=num_query,
        content_dim=content_dim),
    roi_head=dict(
        type='AdaMixerDecoder',
        num_stages=num_stages,
        stage_loss_weights=[1] * num_stages,
        content_dim=content_dim,
        featmap_strides=[4, 8, 16, 32],
        feat_channels=feat_channels,
        n_groups=4,
        in_points=16,
        out_points=32,
        bbox_head=dict(
            type='AdaMixerDecoderStage',
            num_classes=num_classes,
            num_ffn_fcs=2,
            num_heads=4,
            num_cls_fcs=1,
            num_reg_fcs=1,
            feedforward_channels=256,
            dropout=0.0,
            ffn_act_cfg=dict(type='ReLU', inplace=True),
            loss_cls=dict(
                type='FocalLoss',
                use_sigmoid=True,
                gamma=2.0,
                alpha=0.25,
                loss_weight=2.0),
            loss_bbox=dict(type='L1Loss', loss_weight=5.0),
            loss_iou=dict(type='GIoULoss', loss_weight=2.0))),
    train_cfg=dict(
        rpn=None,
        rcnn=[
            dict(
                assigner=dict(
                    type='HungarianAssigner',
                    match_costs=[
                        dict(type='FocalLossCost', weight=2.0),
                        dict(type='BBoxL1Cost', weight=5.0, box_format='xyxy'),
                        dict(type='IoUCost', iou_mode='giou', weight=2.0)
                    ]),
                sampler=dict(type='PseudoSampler'),
                pos_weight=1) for _ in range(num_stages)
        ]),
    test_cfg=dict(rpn=None, rcnn=dict(max_per_img=num_query)))

max_iters = 600
train_cfg = dict(
    type='IterBasedTrainLoop', max_iters=max_iters, val_interval=max_iters)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=0.0001),
    clip_grad=dict(max_norm=1.0, norm_type=2))
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
    logger=dict(type='LoggerHook', interval=20),
    checkpoint=dict(type='CheckpointHook', interval=max_iters, by_epoch=False))
log_processor = dict(by_epoch=False)
randomness = dict(seed=0)
