# DINO-4scale R-50 12e (mmdet's config) with a LORS decoder: the 6 decoder
# layers share one weight per projection (self-attention q/k/v/out, deformable
# cross-attention sampling_offsets/attention_weights/value_proj/output_proj,
# FFN fc1/fc2) and keep private rank-16 residuals, biases and LayerNorms.
# Parameters: docs/detr.md (parameter table).
_base_ = 'mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py'
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

model = dict(
    type='LorsDINO',
    lors=dict(decoder=dict(rank=16, num_terms=1)))

# mmdet's runtime (inherited above) with configs/_base_/default_runtime_lors.py's hooks:
# atomic checkpoints and exact resumption
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='RNGStateHook')]
