# mmdet's queryinst_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py with its six box stages and six mask stages as LORS stacks
# (configs/_base_/models/lors-sparse-rcnn_stages.py). Parameters: docs/sparse_rcnn.md.
_base_ = [
    'mmdet::queryinst/queryinst_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py',
    '../_base_/models/lors-sparse-rcnn_stages.py'
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

model = dict(
    type='LorsQueryInst',
    lors=dict(decoder={{_base_.lors_sparse_rcnn_stages}},
              mask_decoder={{_base_.lors_queryinst_mask_stages}}))

# mmdet's runtime (inherited above) with configs/_base_/default_runtime_lors.py's hooks:
# atomic checkpoints and exact resumption
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='RNGStateHook')]
