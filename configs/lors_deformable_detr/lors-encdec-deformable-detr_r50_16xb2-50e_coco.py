# Deformable-DETR R-50 50e (mmdet's config) with LORS encoder and decoder: the
# 6 layers of each stack share one weight per projection and keep private
# rank-16 residuals, biases and LayerNorms. Parameters: docs/detr.md.
_base_ = './lors-deformable-detr_r50_16xb2-50e_coco.py'
model = dict(lors=dict(encoder=dict(rank=16, num_terms=1)))
