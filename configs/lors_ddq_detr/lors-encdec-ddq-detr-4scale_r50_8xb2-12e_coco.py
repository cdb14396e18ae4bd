# DDQ-DETR-4scale R-50 12e (mmdet's config) with LORS encoder and decoder: the layers of each stack
# share one weight per projection and keep private rank-16 residuals.
_base_ = './lors-ddq-detr-4scale_r50_8xb2-12e_coco.py'
model = dict(lors=dict(encoder=dict(rank=16, num_terms=1)))
