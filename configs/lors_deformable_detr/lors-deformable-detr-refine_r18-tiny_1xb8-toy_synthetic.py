# The toy Deformable-DETR with box refinement
# (../deformable_detr/deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py)
# with a LORS decoder at the default rank 16 of the COCO configs.
_base_ = '../deformable_detr/deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py'

model = dict(
    type='LorsDeformableDETR',
    lors=dict(decoder=dict(rank=16, num_terms=1)))
