"""AdaMixer on MMDetection 3.x, and LORS-AdaMixer."""
from .channel_mapping import AdaMixerChannelMapping
from .decoder import AdaMixerDecoder, LorsAdaMixerDecoder
from .decoder_stage import AdaMixerDecoderStage, LorsAdaMixerDecoderStage
from .detector import AdaMixer
from .mixing import AdaptiveMixing, LorsAdaptiveMixing
from .query_generator import AdaMixerQueryGenerator
from .sampling_3d import level_weights, make_sample_points, sampling_3d
from .xyzr import (refine_xyzr, whole_image_xyzr, xyzr_position_encoding,
                   xyzr_to_wh, xyzr_to_xyxy)

__all__ = [
    'AdaMixer', 'AdaMixerChannelMapping', 'AdaMixerQueryGenerator',
    'AdaMixerDecoder', 'AdaMixerDecoderStage', 'LorsAdaMixerDecoder',
    'LorsAdaMixerDecoderStage', 'AdaptiveMixing', 'LorsAdaptiveMixing',
    'make_sample_points', 'level_weights', 'sampling_3d', 'xyzr_to_wh',
    'xyzr_to_xyxy', 'whole_image_xyzr', 'refine_xyzr',
    'xyzr_position_encoding'
]
