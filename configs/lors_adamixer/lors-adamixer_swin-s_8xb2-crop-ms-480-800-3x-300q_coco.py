# LORS-AdaMixer, Swin-S, 300 queries, 3x crop + multi-scale: AdaMixer's Swin-S
# recipe (no decay on norms / position tables, 1000 warmup iterations) with
# the LORS decoder.
# Stochastic depth: SwinTransformerBranchDropPath, which is mmdet's
# SwinTransformer with a switch for the attention branch. attn_drop_path=True
# (DropPath on the attention and the FFN branch, mmdet's behaviour) follows
# the LORS release: li-jl16/LORS at commit d4adab2,
# AdaMixer_with_LORS/configs/famixer_swin_s_lors_300_query_crop_mstrain_480-800_3x_coco.py,
# builds type='SwinTransformer' with AdaMixer's settings and no such switch,
# on top of AdaMixer's code, whose Swin drops both branches; no Swin file of
# the release itself was available to check. attn_drop_path=False keeps the
# attention branch and drops the FFN branch only: the Swin-S described to us
# as the LORS authors' one.
_base_ = [
    '../adamixer/adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco.py',
    '../_base_/models/lors-adamixer_decoder.py'
]
model = dict(
    backbone=dict(type='SwinTransformerBranchDropPath', attn_drop_path=True),
    roi_head={{_base_.lors_adamixer_roi_head}},
    lors=dict(decoder={{_base_.lors_adamixer_decoder}}))
