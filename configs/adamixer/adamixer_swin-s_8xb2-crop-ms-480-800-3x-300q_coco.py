# AdaMixer, Swin-S (ImageNet-1k, 224), 300 queries, 3x crop + multi-scale.
# Published COCO val box AP: 51.3.
# Stochastic depth as in the authors' code: mmdet's SwinTransformer applies
# DropPath on both residual branches of every block (attention and FFN), as
# does the SwinTransformer of MCG-NJU/AdaMixer (mmdet/models/backbones/swin.py
# at commits 17b52c0 and 3f266d5) that the authors'
# adamixer_swin_s_300_query_crop_mstrain_480-800_3x_coco.py builds.
_base_ = './adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py'

pretrained = 'https://github.com/SwinTransformer/storage/releases/download/v1.0.0/swin_small_patch4_window7_224.pth'  # noqa
model = dict(
    backbone=dict(
        _delete_=True,
        type='SwinTransformer',
        embed_dims=96,
        depths=[2, 2, 18, 2],
        num_heads=[3, 6, 12, 24],
        window_size=7,
        mlp_ratio=4,
        qkv_bias=True,
        qk_scale=None,
        drop_rate=0.,
        attn_drop_rate=0.,
        drop_path_rate=0.2,
        patch_norm=True,
        out_indices=(0, 1, 2, 3),
        with_cp=False,
        convert_weights=True,
        init_cfg=dict(type='Pretrained', checkpoint=pretrained)),
    neck=dict(in_channels=[96, 192, 384, 768]))

# no weight decay on Swin's position tables and on any *norm* parameter
optim_wrapper = dict(
    paramwise_cfg=dict(
        custom_keys={
            'absolute_pos_embed': dict(decay_mult=0.),
            'relative_position_bias_table': dict(decay_mult=0.),
            'norm': dict(decay_mult=0.)
        }))
# 1000 warmup iterations
param_scheduler = [
    dict(
        type='LinearLR', start_factor=0.001, by_epoch=False, begin=0,
        end=1000),
    dict(
        type='MultiStepLR',
        begin=0,
        end={{_base_.max_epochs}},
        by_epoch=True,
        milestones=[24, 33],
        gamma=0.1)
]
