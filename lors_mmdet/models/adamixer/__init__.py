"""AdaMixer on MMDetection 3.x; LORS-AdaMixer is AdaMixer + ``model.lors``."""
from .channel_mapping import AdaMixerChannelMapping
from .decoder import AdaMixerDecoder
from .decoder_stage import AdaMixerDecoderStage
from .detector import (AdaMixer, init_published_lors_mixing,
                       migrate_former_lors_keys)
from .mixing import AdaptiveMixing
from .query_generator import AdaMixerQueryGenerator
from .sampling_3d import level_weights, make_sample_points, sampling_3d
from .xyzr import (refine_xyzr, whole_image_xyzr, xyzr_position_encoding,
                   xyzr_to_wh, xyzr_to_xyxy)

__all__ = [
    'AdaMixer', 'AdaMixerChannelMapping', 'AdaMixerQueryGenerator',
    'AdaMixerDecoder', 'AdaMixerDecoderStage', 'AdaptiveMixing',
    'init_published_lors_mixing', 'migrate_former_lors_keys',
    'make_sample_points', 'level_weights', 'sampling_3d', 'xyzr_to_wh',
    'xyzr_to_xyxy', 'whole_image_xyzr', 'refine_xyzr',
    'xyzr_position_encoding'
]
