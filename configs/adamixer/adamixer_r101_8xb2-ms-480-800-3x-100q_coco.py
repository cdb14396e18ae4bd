# AdaMixer, R-101, 100 queries, 3x multi-scale (480-800, no crop). Checked
# against MCG-NJU/AdaMixer configs/adamixer/adamixer_r101_mstrain_480-800_3x_coco.py:
# the R-50 counterpart with depth 101 and torchvision's ResNet-101 weights.
_base_ = './adamixer_r50_8xb2-ms-480-800-3x-100q_coco.py'

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet101')))
