# The AdaMixer model (Gao et al., CVPR 2022) as published for COCO: R-50,
# 100 queries, 6 stages, G=4, P_in=32, P_out=128 (MCG-NJU/AdaMixer,
# configs/adamixer/adamixer_r50_1x_coco.py). Shared by the COCO configs and
# the toy configs, which override only the sizes.
# Matching and training targets of one stage (one entry per stage).
adamixer_stage_train_cfg = dict(
    assigner=dict(
        type='HungarianAssigner',
        match_costs=[
            dict(type='FocalLossCost', weight=2.0),
            dict(type='BBoxL1Cost', weight=5.0, box_format='xyxy'),
            dict(type='IoUCost', iou_mode='giou', weight=2.0)
        ]),
    sampler=dict(type='PseudoSampler'),
    pos_weight=1)

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
        out_channels=256),
    rpn_head=dict(
        type='AdaMixerQueryGenerator', num_query=100, content_dim=256),
    roi_head=dict(
        type='AdaMixerDecoder',
        num_stages=6,
        stage_loss_weights=[1] * 6,
        content_dim=256,
        featmap_strides=[4, 8, 16, 32],
        # mixing sizes of every stage: G, P_in, P_out
        feat_channels=256,
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
        rpn=None, rcnn=[adamixer_stage_train_cfg for _ in range(6)]),
    test_cfg=dict(rpn=None, rcnn=dict(max_per_img=100)))
