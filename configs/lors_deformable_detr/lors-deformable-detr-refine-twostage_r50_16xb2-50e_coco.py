# LORS Deformable-DETR with iterative box refinement, two-stage.
_base_ = './lors-deformable-detr-refine_r50_16xb2-50e_coco.py'
model = dict(as_two_stage=True)
