# LORS encoder and decoder, Deformable-DETR with box refinement, two-stage.
_base_ = './lors-encdec-deformable-detr-refine_r50_16xb2-50e_coco.py'
model = dict(as_two_stage=True)
