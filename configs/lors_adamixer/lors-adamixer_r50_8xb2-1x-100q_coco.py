# LORS-AdaMixer (Li et al., CVPR 2024), R-50, 100 queries, 1x schedule:
# AdaMixer's recipe with the LORS decoder (G=2, P_in=64, P_out=128, k=16,
# K_i=[1, 1, 2, 2, 3, 3], r=8).
_base_ = [
    '../adamixer/adamixer_r50_8xb2-1x-100q_coco.py',
    '../_base_/models/lors-adamixer_decoder.py'
]
model = dict(
    roi_head={{_base_.lors_adamixer_roi_head}},
    lors=dict(decoder={{_base_.lors_adamixer_decoder}}))
