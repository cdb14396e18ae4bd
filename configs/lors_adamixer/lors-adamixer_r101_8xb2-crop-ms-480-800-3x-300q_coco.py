# LORS-AdaMixer, R-101, 300 queries, 3x crop + multi-scale.
_base_ = './lors-adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py'

model = dict(
    backbone=dict(
        depth=101,
        init_cfg=dict(type='Pretrained',
                      checkpoint='torchvision://resnet101')))
