# The LORS half of the 6-stage accuracy study (docs/accuracy.md): the 6-stage
# toy AdaMixer (../adamixer/adamixer-6stage_r18-tiny_1xb16-toy_synthetic.py)
# with the published LORS decoder scaled down with it: shared mixing generator
# and output projection, private adaptive cores of size k=4 (COCO: 16; the
# ratio to the c=32 group channels and P_in=16 points is the paper's) with
# K_i=[1, 1, 2, 2, 3, 3] terms, static factors per mixing group, rank-2
# output residuals (COCO: 8), the published init. Everything else is the
# stock toy's.
_base_ = '../adamixer/adamixer-6stage_r18-tiny_1xb16-toy_synthetic.py'

model = dict(
    lors=dict(
        decoder=dict(
            include=['adaptive_mixing.out_proj'],
            rank=2,
            factor_init='kaiming',
            adaptive=dict(
                core_size=4,
                adaptive_terms=[1, 1, 2, 2, 3, 3],
                per_group_factors=True,
                factor_init='kaiming'))))
