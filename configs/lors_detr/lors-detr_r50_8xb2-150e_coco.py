# DETR R-50 150e (mmdet's config) with a LORS decoder: the decoder layers share one weight
# per projection and keep private rank-16 residuals, biases and LayerNorms.
_base_ = 'mmdet::detr/detr_r50_8xb2-150e_coco.py'
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

model = dict(
    type='LorsDETR',
    lors=dict(decoder=dict(rank=16, num_terms=1)))

# mmdet's runtime (inherited above) with configs/_base_/default_runtime_lors.py's hooks:
# atomic checkpoints and exact resumption
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='RNGStateHook')]
