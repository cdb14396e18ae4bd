# Deformable-DETR R-50 50e (mmdet's config) with a LORS decoder: the 6 decoder
# layers share one weight per projection and keep private rank-16 residuals,
# biases and LayerNorms. Parameters: docs/detr.md (parameter table).
# paramwise_cfg is mmdet's: `sampling_offsets` (shared weight and private
# parts alike) keeps lr_mult 0.1.
_base_ = 'mmdet::deformable_detr/deformable-detr_r50_16xb2-50e_coco.py'
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

model = dict(
    type='LorsDeformableDETR',
    lors=dict(decoder=dict(rank=16, num_terms=1)))

# mmdet's runtime (inherited above) with configs/_base_/default_runtime_lors.py's hooks:
# atomic checkpoints and exact resumption
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='RNGStateHook')]
