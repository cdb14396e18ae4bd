# A small LORS-AdaMixer for CPU on the synthetic shapes data set: the toy
# AdaMixer (../adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py) with the LORS
# decoder: shared mixing generator and output projection, private adaptive
# cores k=8 with K_i=[1, 2, 3] terms (static factors per mixing group, as
# published), rank-4 output residuals, the published init. The mixing
# shapes stay the toy AdaMixer's (G=4, P_in=16), so that stock and LORS differ
# only in what the stages share; the COCO configs use the paper's G=2, P_in=64.
_base_ = '../adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py'

model = dict(
    lors=dict(
        decoder=dict(
            include=['adaptive_mixing.out_proj'],
            rank=4,
            factor_init='kaiming',
            adaptive=dict(
                core_size=8,
                adaptive_terms=[1, 2, 3],
                per_group_factors=True,
                factor_init='kaiming'))))
