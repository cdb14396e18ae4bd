# tiny_deformable_detr_synthetic.py with a LORS decoder at rank 4 (the stock
# tiny model's projections are 32 wide: rank 'full' gives other shapes).
_base_ = './tiny_deformable_detr_synthetic.py'

model = dict(type='LorsDeformableDETR', lors=dict(decoder=dict(rank=4)))
