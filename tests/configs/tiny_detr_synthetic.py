# The smallest stock mmdet DETR (one of the detectors whose LORS variant takes
# lors=dict(encoder=..., decoder=...)) on the synthetic data: the trained
# checkpoint that tests/test_compress.py compresses. Not meant to learn much.
_base_ = [
    'mmdet::_base_/default_runtime.py',
    '../../configs/_base_/datasets/synthetic_coco_detection.py',
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)
randomness = dict(seed=0, deterministic=True)

embed_dims = 32
attn_cfg = dict(embed_dims=embed_dims, num_heads=4, dropout=0.0,
                batch_first=True)
ffn_cfg = dict(embed_dims=embed_dims, feedforward_channels=64, num_fcs=2,
               ffn_drop=0.0, act_cfg=dict(type='ReLU', inplace=True))
model = dict(
    type='DETR',
    num_queries=10,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='ResNet', depth=18, base_channels=8, num_stages=4,
        out_indices=(3, ), frozen_stages=-1, norm_cfg=dict(type='BN'),
        norm_eval=False, style='pytorch', init_cfg=None),
    neck=dict(type='ChannelMapper', in_channels=[64], kernel_size=1,
              out_channels=embed_dims, act_cfg=None, norm_cfg=None,
              num_outs=1),
    encoder=dict(num_layers=2,
                 layer_cfg=dict(self_attn_cfg=attn_cfg, ffn_cfg=ffn_cfg)),
    decoder=dict(
        num_layers=3,
        layer_cfg=dict(self_attn_cfg=attn_cfg, cross_attn_cfg=attn_cfg,
                       ffn_cfg=ffn_cfg),
        return_intermediate=True),
    positional_encoding=dict(num_feats=embed_dims // 2, normalize=True),
    bbox_head=dict(
        type='DETRHead',
        num_classes=6,
        embed_dims=embed_dims,
        loss_cls=dict(type='CrossEntropyLoss', bg_cls_weight=0.1,
                      use_sigmoid=False, loss_weight=1.0, class_weight=1.0),
        loss_bbox=dict(type='L1Loss', loss_weight=5.0),
        loss_iou=dict(type='GIoULoss', loss_weight=2.0)),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='ClassificationCost', weight=1.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=10))

img_scale = (64, 64)
train_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='RandomFlip', prob=0.5),
    dict(type='PackDetInputs')
]
test_pipeline = [
    dict(type='LoadImageFromFile'),
    dict(type='Resize', scale=img_scale, keep_ratio=True),
    dict(type='LoadAnnotations', with_bbox=True),
    dict(type='PackDetInputs',
         meta_keys=('img_id', 'img_path', 'ori_shape', 'img_shape',
                    'scale_factor'))
]
train_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                        dataset=dict(pipeline=train_pipeline))
val_dataloader = dict(batch_size=4, num_workers=0, persistent_workers=False,
                      dataset=dict(pipeline=test_pipeline))
test_dataloader = val_dataloader

optim_wrapper = dict(
    type='OptimWrapper',
    optimizer=dict(type='AdamW', lr=1e-3, weight_decay=1e-4),
    clip_grad=dict(max_norm=0.1, norm_type=2),
    paramwise_cfg=dict(custom_keys={'backbone': dict(lr_mult=0.1)}))
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=5, val_interval=5)
val_cfg = dict(type='ValLoop')
test_cfg = dict(type='TestLoop')
param_scheduler = [
    dict(type='MultiStepLR', begin=0, end=5, by_epoch=True, milestones=[4],
         gamma=0.1)
]
default_hooks = dict(
    logger=dict(type='LoggerHook', interval=1),
    checkpoint=dict(type='CheckpointHook', interval=5))
log_processor = dict(by_epoch=True, window_size=1)
