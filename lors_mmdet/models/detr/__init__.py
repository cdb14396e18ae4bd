"""LORS for mmdet's DETR family: decoders of DINO and Deformable-DETR
(subclasses), and encoder / decoder stacks of DETR, Conditional-DETR,
DAB-DETR and DDQ-DETR by stack surgery (:mod:`.stacks`)."""
from .adaptive import AdaptiveLorsLinear
from .attention import LorsMultiheadAttention, LorsMultiScaleDeformableAttention
from .decoders import (LorsDeformableDetrTransformerDecoder,
                       LorsDeformableDetrTransformerDecoderLayer,
                       LorsDinoTransformerDecoder, decoder_projection_shapes)
from .detectors import LorsDeformableDETR, LorsDINO
from .ffn import LorsFFN
from .lors_config import DEFAULT_RANK, build_lors_plan
from .stacks import (LorsConditionalDETR, LorsDABDETR, LorsDDQDETR, LorsDETR,
                     LorsStacksMixin, parse_lors_cfg)

__all__ = [
    'AdaptiveLorsLinear', 'LorsMultiheadAttention',
    'LorsMultiScaleDeformableAttention', 'LorsFFN',
    'LorsDeformableDetrTransformerDecoderLayer',
    'LorsDeformableDetrTransformerDecoder', 'LorsDinoTransformerDecoder',
    'decoder_projection_shapes', 'LorsDeformableDETR', 'LorsDINO',
    'DEFAULT_RANK', 'build_lors_plan', 'LorsStacksMixin', 'parse_lors_cfg',
    'LorsDETR', 'LorsConditionalDETR', 'LorsDABDETR', 'LorsDDQDETR'
]
