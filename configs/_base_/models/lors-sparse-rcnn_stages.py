# model.lors of the LORS Sparse R-CNN / QueryInst configs: the six box stages
# (roi_head.bbox_head) share one weight per static map (self-attention q/k/v/out,
# the dynamic convolution's output projection, FFN) with private rank-16
# residuals, and one DynamicConv generator with private adaptive residuals
# (k=16 cores, K_i=[1, 1, 2, 2, 3, 3] per stage: LORS-AdaMixer's settings; no
# LORS Sparse R-CNN was published). Use in a config:
#   model = dict(type='LorsSparseRCNN',
#                lors=dict(decoder={{_base_.lors_sparse_rcnn_stages}}))
lors_sparse_rcnn_stages = dict(
    include=['attention', 'instance_interactive_conv.fc_layer', 'ffn'],
    rank=16,
    adaptive=dict(core_size=16, adaptive_terms=[1, 1, 2, 2, 3, 3]))
# QueryInst's mask stages: only their DynamicConv generator (the convolutions
# are no LORS targets)
lors_queryinst_mask_stages = dict(
    exclude=['*'],
    adaptive=dict(core_size=16, adaptive_terms=[1, 1, 2, 2, 3, 3]))
