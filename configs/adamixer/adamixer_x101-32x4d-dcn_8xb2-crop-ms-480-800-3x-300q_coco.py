# AdaMixer, ResNeXt-101 32x4d with deformable convolution (DCN, mmcv's
# compiled op) in stages 2-4, 300 queries, 3x crop + multi-scale. Checked
# against MCG-NJU/AdaMixer
# configs/adamixer/adamixer_dx101_300_query_crop_mstrain_480-800_3x_coco.py:
# the R-50 300-query crop config with groups 32, base width 4, DCN
# (deform_groups 1, fallback_on_stride False) on (False, True, True, True),
# frozen stage 1, BN with norm_eval kept from the base, ImageNet weights
# open-mmlab://resnext101_32x4d. Published COCO val box AP: 49.5.
_base_ = './adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py'

model = dict(
    backbone=dict(
        type='ResNeXt',
        depth=101,
        groups=32,
        base_width=4,
        num_stages=4,
        out_indices=(0, 1, 2, 3),
        frozen_stages=1,
        norm_cfg=dict(type='BN', requires_grad=True),
        style='pytorch',
        dcn=dict(type='DCN', deform_groups=1, fallback_on_stride=False),
        stage_with_dcn=(False, True, True, True),
        init_cfg=dict(
            type='Pretrained', checkpoint='open-mmlab://resnext101_32x4d')))
