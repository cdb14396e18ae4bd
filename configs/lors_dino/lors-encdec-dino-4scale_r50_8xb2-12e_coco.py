# DINO-4scale R-50 12e (mmdet's config) with LORS encoder and decoder: the 6
# layers of each stack share one weight per projection (decoder: see
# ./lors-dino-4scale_r50_8xb2-12e_coco.py; encoder: deformable self-attention
# sampling_offsets/attention_weights/value_proj/output_proj, FFN) and keep
# private rank-16 residuals, biases and LayerNorms. Transformer parameters:
# docs/detr.md (parameter table).
_base_ = './lors-dino-4scale_r50_8xb2-12e_coco.py'
model = dict(lors=dict(encoder=dict(rank=16, num_terms=1)))
