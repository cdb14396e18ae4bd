# DETR R-50 150e (mmdet's config) with LORS encoder and decoder: the layers of each stack
# share one weight per projection and keep private rank-16 residuals.
_base_ = './lors-detr_r50_8xb2-150e_coco.py'
model = dict(lors=dict(encoder=dict(rank=16, num_terms=1)))
