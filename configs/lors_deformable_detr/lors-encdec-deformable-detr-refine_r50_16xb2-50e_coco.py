# LORS encoder and decoder, Deformable-DETR with iterative box refinement.
_base_ = './lors-encdec-deformable-detr_r50_16xb2-50e_coco.py'
model = dict(with_box_refine=True)
