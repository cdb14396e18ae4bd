# The toy DINO (../dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py) with LORS
# encoder and decoder at the rank 16 of the COCO configs.
_base_ = './lors-dino-4scale_r18-tiny_1xb8-toy_synthetic.py'
model = dict(lors=dict(encoder=dict(rank=16, num_terms=1)))
