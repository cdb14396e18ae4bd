# The LORS-AdaMixer decoder with the authors' hyperparameters (spec table):
# the adaptive mixing of the 6 stages shares one parameter generator and one
# output projection; each stage adds private low-rank residuals: K_i adaptive
# cores of size k to the mixing matrices, a rank-r residual to the projection.
# Use: model = dict(roi_head={{_base_.lors_adamixer_decoder}}) in a config that
# also inherits an AdaMixer config.
lors_adamixer_decoder = dict(
    type='LorsAdaMixerDecoder',
    n_groups=2,  # G
    in_points=64,  # P_in
    out_points=128,  # P_out
    core_sizes=[16, 16, 16, 16, 16, 16],  # k per stage
    num_terms=[1, 1, 2, 2, 3, 3],  # K_i per stage
    out_proj_ranks=[8, 8, 8, 8, 8, 8],  # r per stage
    bbox_head=dict(type='LorsAdaMixerDecoderStage'))
