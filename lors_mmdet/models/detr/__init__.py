"""LORS decoders for mmdet's DINO and Deformable-DETR."""
from .adaptive import AdaptiveLorsLinear
from .attention import LorsMultiheadAttention, LorsMultiScaleDeformableAttention
from .decoders import (LorsDeformableDetrTransformerDecoder,
                       LorsDeformableDetrTransformerDecoderLayer,
                       LorsDinoTransformerDecoder, decoder_projection_shapes)
from .detectors import LorsDeformableDETR, LorsDINO
from .ffn import LorsFFN
from .lors_config import DEFAULT_RANK, build_lors_plan

__all__ = [
    'AdaptiveLorsLinear', 'LorsMultiheadAttention',
    'LorsMultiScaleDeformableAttention', 'LorsFFN',
    'LorsDeformableDetrTransformerDecoderLayer',
    'LorsDeformableDetrTransformerDecoder', 'LorsDinoTransformerDecoder',
    'decoder_projection_shapes', 'LorsDeformableDETR', 'LorsDINO',
    'DEFAULT_RANK', 'build_lors_plan'
]
