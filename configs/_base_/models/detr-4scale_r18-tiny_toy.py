# The part of the CPU toy DETRs (DINO, Deformable-DETR) that the two share:
# a tiny ResNet-18 (16 base channels) pretrained on the synthetic shapes by
# tools/pretrain_toy_backbone.py (the toy's stand-in for ImageNet weights:
# from scratch the toys learn the classes much later, docs/experiments/log.md)
# and 4 feature levels at strides 8, 16, 32, 64 (340 tokens per
# 128 px image; most shapes are smaller than 32 px, stride 16 alone loses
# them), 2 encoder and 3 decoder layers, 50 queries, no dropout. embed_dims
# stays 256: DINO's query position encoding (coordinate_to_encoding) and
# two-stage proposal encoding are fixed at 2 x 256 channels in mmdet.
# Each detector's config adds its type, head, position encoding and options.
num_classes = 6
embed_dims = 256
num_queries = 50
num_levels = 4
model = dict(
    num_queries=num_queries,
    with_box_refine=True,
    num_feature_levels=num_levels,
    data_preprocessor=dict(
        type='DetDataPreprocessor',
        mean=[123.675, 116.28, 103.53],
        std=[58.395, 57.12, 57.375],
        bgr_to_rgb=True,
        pad_size_divisor=1),
    backbone=dict(
        type='ResNet',
        depth=18,
        base_channels=16,
        num_stages=4,
        out_indices=(1, 2, 3),
        frozen_stages=-1,
        norm_cfg=dict(type='BN', requires_grad=True),
        norm_eval=False,
        style='pytorch',
        init_cfg=dict(
            type='Pretrained',
            checkpoint='checkpoints/toy/resnet18-tiny_shapes.pth')),
    neck=dict(
        type='ChannelMapper',
        in_channels=[32, 64, 128],
        kernel_size=1,
        out_channels=embed_dims,
        act_cfg=None,
        norm_cfg=dict(type='GN', num_groups=32),
        num_outs=num_levels),
    encoder=dict(
        num_layers=2,
        layer_cfg=dict(
            self_attn_cfg=dict(
                embed_dims=embed_dims, num_levels=num_levels, dropout=0.0),
            ffn_cfg=dict(
                embed_dims=embed_dims,
                feedforward_channels=512,
                ffn_drop=0.0))),
    decoder=dict(
        num_layers=3,
        return_intermediate=True,
        layer_cfg=dict(
            self_attn_cfg=dict(
                embed_dims=embed_dims, num_heads=8, dropout=0.0),
            cross_attn_cfg=dict(
                embed_dims=embed_dims, num_levels=num_levels, dropout=0.0),
            ffn_cfg=dict(
                embed_dims=embed_dims,
                feedforward_channels=512,
                ffn_drop=0.0)),
        post_norm_cfg=None),
    train_cfg=dict(
        assigner=dict(
            type='HungarianAssigner',
            match_costs=[
                dict(type='FocalLossCost', weight=2.0),
                dict(type='BBoxL1Cost', weight=5.0, box_format='xywh'),
                dict(type='IoUCost', iou_mode='giou', weight=2.0)
            ])),
    test_cfg=dict(max_per_img=num_queries))
