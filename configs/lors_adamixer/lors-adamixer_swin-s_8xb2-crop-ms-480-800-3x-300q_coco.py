# LORS-AdaMixer, Swin-S, 300 queries, 3x crop + multi-scale: AdaMixer's Swin-S
# recipe (no decay on norms / position tables, 1000 warmup iterations) with
# the LORS decoder.
_base_ = [
    '../adamixer/adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco.py',
    '../_base_/models/lors-adamixer_decoder.py'
]
model = dict(roi_head={{_base_.lors_adamixer_decoder}})
