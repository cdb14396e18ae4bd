# A small LORS-AdaMixer for CPU on the synthetic shapes data set: the toy
# AdaMixer with the LORS decoder (shared mixing generator and output
# projection, private adaptive cores k=8, K_i=[1, 1, 2, 2, 3, 3], rank-4
# output residuals; G=2, P_in=32 as in the paper's G=2, P_in=64 ratio).
_base_ = '../adamixer/adamixer_r18-tiny_1xb8-toy_synthetic.py'

model = dict(
    roi_head=dict(
        type='LorsAdaMixerDecoder',
        n_groups=2,
        in_points=32,
        out_points=32,
        core_sizes=8,
        num_terms=[1, 1, 2, 2, 3, 3],
        out_proj_ranks=4,
        bbox_head=dict(type='LorsAdaMixerDecoderStage')))
