# mmdet's sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py with its six box stages as a LORS stack
# (configs/_base_/models/lors-sparse-rcnn_stages.py). Parameters: docs/sparse_rcnn.md.
_base_ = [
    'mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_300-proposals_crop-ms-480-800-3x_coco.py',
    '../_base_/models/lors-sparse-rcnn_stages.py'
]
custom_imports = dict(imports=['lors_mmdet'], allow_failed_imports=False)

model = dict(
    type='LorsSparseRCNN',
    lors=dict(decoder={{_base_.lors_sparse_rcnn_stages}}))

# mmdet's runtime (inherited above) with configs/_base_/default_runtime_lors.py's hooks:
# atomic checkpoints and exact resumption
default_hooks = dict(checkpoint=dict(type='AtomicCheckpointHook'))
custom_hooks = [dict(type='RNGStateHook')]
