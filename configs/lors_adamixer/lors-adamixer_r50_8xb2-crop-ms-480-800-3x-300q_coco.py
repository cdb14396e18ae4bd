# LORS-AdaMixer, R-50, 300 queries, 3x schedule with crop + multi-scale
# (480-800) augmentation.
_base_ = [
    '../adamixer/adamixer_r50_8xb2-crop-ms-480-800-3x-300q_coco.py',
    '../_base_/models/lors-adamixer_decoder.py'
]
model = dict(
    roi_head={{_base_.lors_adamixer_roi_head}},
    lors=dict(decoder={{_base_.lors_adamixer_decoder}}))
