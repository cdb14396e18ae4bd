"""LORS Deformable-DETR and DINO detectors (mmdet 3.3's, with a LORS decoder)."""
import copy

from mmdet.models.detectors import DINO, DeformableDETR
from mmdet.registry import MODELS

from .decoders import (LorsDeformableDetrTransformerDecoder,
                       LorsDinoTransformerDecoder)


class LorsDecoderMixin:
    """Swaps mmdet's hard-coded decoder for its LORS version.

    mmdet's ``_init_layers`` builds the decoder class by name; it is run
    unchanged (so positional encoding, encoder, query embeddings... stay
    mmdet's) and its stock decoder is then replaced. ``decoder.lors`` carries
    the LORS settings (see :mod:`.lors_config`).
    """

    lors_decoder_class: type = None

    def _init_layers(self) -> None:
        decoder_cfg = copy.deepcopy(self.decoder)
        lors_cfg = decoder_cfg.pop('lors', None)
        self.decoder = copy.deepcopy(decoder_cfg)
        super()._init_layers()
        self.decoder = self.lors_decoder_class(**decoder_cfg, lors=lors_cfg)

    def init_weights(self) -> None:
        """mmdet's DETR init, then the LORS init of the decoder."""
        super().init_weights()
        self.decoder.reset_lors_parameters()


@MODELS.register_module()
class LorsDeformableDETR(LorsDecoderMixin, DeformableDETR):
    """Deformable-DETR (also ``with_box_refine`` / ``as_two_stage``) with LORS.

    Same arguments as mmdet's ``DeformableDETR``; ``decoder`` accepts a
    ``lors`` dict.
    """

    lors_decoder_class = LorsDeformableDetrTransformerDecoder


@MODELS.register_module()
class LorsDINO(LorsDecoderMixin, DINO):
    """DINO with a LORS decoder.

    Same arguments as mmdet's ``DINO``; ``decoder`` accepts a ``lors`` dict.
    """

    lors_decoder_class = LorsDinoTransformerDecoder
