# AdaMixer (Gao et al., CVPR 2022), R-50, 100 queries, 1x schedule.
# Published COCO val box AP of the authors' release: 42.7.
_base_ = [
    'mmdet::_base_/datasets/coco_detection.py',
    'mmdet::_base_/schedules/schedule_1x.py',
    '../_base_/default_runtime_lors.py'
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

num_stages = 6
num_query = 100
content_dim = 256
feat_channels = 256

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
        depth=50,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=True,
        style='pytorch',
        init_cfg=dict(type='Pretrained', checkpoint='torchvision://resnet50')),
    neck=dict(
        type='AdaMixerChannelMapping',
        in_channels=[256, 512, 1024, 2048],
        out_channels=feat_channels),
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
        # mixing sizes of every stage: G, P_in, P_out
        feat_channels=feat_channels,
        n_groups=4,
        in_points=32,
        out_points=128,
        bbox_head=dict(
            type='AdaMixerDecoderStage',
            num_classes=80,
            num_ffn_fcs=2,
            num_heads=8,
            num_cls_fcs=1,
            num_reg_fcs=1,
            feedforward_channels=2048,
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

# 8 GPUs x 2 images; AdamW, grad clip 1.0
optim_wrapper = dict(
    optimizer=dict(
        _delete_=True, type='AdamW', lr=0.000025, weight_decay=0.0001),
    clip_grad=dict(max_norm=1.0, norm_type=2))

# 12 epochs, lr x0.1 after epochs 8 and 11, 500 iterations linear warmup
# (all inherited from schedule_1x: kept explicit here for reading)
max_epochs = 12
train_cfg = dict(type='EpochBasedTrainLoop', max_epochs=max_epochs,
                 val_interval=1)
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0, end=500),
    dict(
        type='MultiStepLR',
        begin=0,
        end=max_epochs,
        by_epoch=True,
        milestones=[8, 11],
        gamma=0.1)
]
auto_scale_lr = dict(base_batch_size=16)
