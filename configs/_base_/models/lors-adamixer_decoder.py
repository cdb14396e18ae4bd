# The LORS-AdaMixer decoder as published (li-jl16/LORS, AdaMixer_with_LORS): the
# adaptive mixing of the 6 stages shares one parameter generator and one
# output projection; each stage adds private low-rank residuals: K_i adaptive
# cores of size k to the mixing matrices, with static factors L, R of their
# own for every mixing group, and a rank-r residual to the projection. The
# private factors start as published: kaiming_uniform_ with default arguments.
# Use: model = dict(roi_head={{_base_.lors_adamixer_decoder}}) in a config that
# also inherits an AdaMixer config.
lors_adamixer_decoder = dict(
    type='LorsAdaMixerDecoder',
    n_groups=2,  # G
    in_points=64,  # P_in
    out_points=128,  # P_out
    core_sizes=[16, 16, 16, 16, 16, 16],  # k per stage
    adaptive_terms=[1, 1, 2, 2, 3, 3],  # K_i per stage
    out_proj_ranks=[8, 8, 8, 8, 8, 8],  # r per stage
    per_group_factors=True,  # L^M, R^M, L^S, R^S: (G * K_i, ., .) per stage
    factor_init='kaiming',  # bound sqrt(6 / fan_in) of each stored tensor
    bbox_head=dict(type='LorsAdaMixerDecoderStage'))
