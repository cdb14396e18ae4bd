# LORS-AdaMixer as published (li-jl16/LORS, AdaMixer_with_LORS) = AdaMixer with
# the paper's mixing sizes + model.lors.decoder: the adaptive mixing of the 6
# stages shares one parameter generator and one output projection; each stage
# adds private low-rank residuals: K_i adaptive cores of size k to the mixing
# matrices, with static factors L, R of their own for every mixing group, and a
# rank-r residual to the projection. The private factors start as published:
# kaiming_uniform_ with default arguments. Everything else stays private.
# Use, in a config that also inherits an AdaMixer config:
#   model = dict(roi_head={{_base_.lors_adamixer_roi_head}},
#                lors=dict(decoder={{_base_.lors_adamixer_decoder}}))
lors_adamixer_roi_head = dict(
    n_groups=2,  # G
    in_points=64,  # P_in
    out_points=128)  # P_out
lors_adamixer_decoder = dict(
    include=['adaptive_mixing.out_proj'],  # the one static target
    rank=8,  # r of the projection's residual (one per stage: a list)
    factor_init='kaiming',  # A: bound sqrt(6 / fan_in) of the stored tensor
    adaptive=dict(
        core_size=16,  # k (one per stage: a list)
        adaptive_terms=[1, 1, 2, 2, 3, 3],  # K_i per stage
        per_group_factors=True,  # L^M, R^M, L^S, R^S: (G * K_i, ., .)
        factor_init='kaiming'))
