"""The AdaMixer detector."""
from mmdet.models.detectors import SparseRCNN
from mmdet.registry import MODELS


@MODELS.register_module()
class AdaMixer(SparseRCNN):
    """AdaMixer: A Fast-Converging Query-Based Object Detector (Gao et al.,
    CVPR 2022, https://arxiv.org/abs/2203.16507).

    Structurally a Sparse R-CNN: backbone, a channel-mapping neck
    (:class:`AdaMixerChannelMapping`), initial queries as the "RPN"
    (:class:`AdaMixerQueryGenerator`) and a cascade decoder as the RoI head
    (:class:`AdaMixerDecoder`, or :class:`LorsAdaMixerDecoder` for
    LORS-AdaMixer).
    """
