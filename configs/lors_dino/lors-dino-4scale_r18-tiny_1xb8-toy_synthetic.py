# The toy DINO (../dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py) with a
# LORS decoder at the default rank 16 of the COCO configs.
_base_ = '../dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py'

model = dict(
    type='LorsDINO',
    lors=dict(decoder=dict(rank=16, num_terms=1)))
