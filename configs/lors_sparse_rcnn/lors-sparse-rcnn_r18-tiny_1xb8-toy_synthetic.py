# The toy Sparse R-CNN (../sparse_rcnn/sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py)
# with its six box stages as a LORS stack: the COCO configs' model.lors
# (../_base_/models/lors-sparse-rcnn_stages.py: attention, the dynamic
# convolution's output projection and the FFN shared with private low-rank
# residuals, the DynamicConv generator shared with private adaptive residuals,
# K_i = [1, 1, 2, 2, 3, 3]) at the toy's quarter width: rank 4 and 4 x 4 cores
# instead of 16. Everything else is the toy Sparse R-CNN's.
_base_ = '../sparse_rcnn/sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py'

model = dict(
    type='LorsSparseRCNN',
    lors=dict(
        decoder=dict(
            include=['attention', 'instance_interactive_conv.fc_layer', 'ffn'],
            rank=4,
            adaptive=dict(core_size=4, adaptive_terms=[1, 1, 2, 2, 3, 3]))))
