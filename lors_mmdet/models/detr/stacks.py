"""LORS encoders and decoders for mmdet's DETR family, by stack surgery.

DETR, Conditional-DETR, DAB-DETR, Deformable-DETR (plain, ``with_box_refine``,
``as_two_stage``), DINO and DDQ-DETR: one mixin, one config key (the same
key as AdaMixer's, :mod:`lors_mmdet.models.lors_stacks`).

mmdet builds its own detector, unchanged; then
:func:`~lors_mmdet.lors.apply_lors` turns the ``layers`` of its encoder and /
or decoder into LORS stacks, the shared weights registered once on the
encoder / decoder. One config key::

    model = dict(
        type='LorsDETR',            # or LorsConditionalDETR, LorsDABDETR,
        ...,                        #    LorsDeformableDETR, LorsDINO,
                                    #    LorsDDQDETR: mmdet's arguments
        lors=dict(
            decoder=dict(rank=16, ranks={'ffn.*': 32}, layer_groups=None),
            encoder=dict(rank=32, exclude=['self_attn.sampling_offsets'])))

Each of ``encoder`` / ``decoder`` is a
:class:`~lors_mmdet.lors.LorsStackConfig` (``rank``, ``num_terms``,
``ranks``, ``include``, ``exclude``, ``layer_groups``, ``init``); a part left out
stays stock.
"""
from mmdet.models.detectors import (DABDETR, DDQDETR, DETR, DINO,
                                    ConditionalDETR, DeformableDETR)
from mmdet.registry import MODELS

from ..distill import PredictionDistillMixin
# shared with AdaMixer; also importable from here, as before
from ..lors_stacks import LORS_PARTS, LorsStacksMixin, parse_lors_cfg  # noqa


class LorsDetrStacksMixin(LorsStacksMixin, PredictionDistillMixin):
    """Adds ``lors=dict(encoder=..., decoder=...)`` to a DETR-family detector
    (:class:`~lors_mmdet.models.lors_stacks.LorsStacksMixin` on the
    ``layers`` of mmdet's encoder and decoder).

    mmdet's ``init_weights`` xavier-initialises every matrix (mmcv's
    deformable attention has its own init): it runs on the stock modules.

    Optional ``distill=dict(...)``: prediction distillation from a frozen
    stock teacher during a fine-tune (:mod:`lors_mmdet.models.distill`).

    Args:
        lors: ``dict(encoder=..., decoder=...)`` of
            :class:`~lors_mmdet.lors.LorsStackConfig` dicts.
        *args, **kwargs: the detector's arguments (and ``distill``).
    """

    lors_stack_paths = {'encoder': 'encoder.layers',
                        'decoder': 'decoder.layers'}


@MODELS.register_module()
class LorsDETR(LorsDetrStacksMixin, DETR):
    """mmdet's DETR with LORS encoder / decoder stacks (``lors=``)."""


@MODELS.register_module()
class LorsConditionalDETR(LorsDetrStacksMixin, ConditionalDETR):
    """mmdet's Conditional-DETR with LORS stacks (``lors=``).

    The ``cross_attn.qpos_proj`` only the first decoder layer has stays a
    private layer of it.
    """


@MODELS.register_module()
class LorsDABDETR(LorsDetrStacksMixin, DABDETR):
    """mmdet's DAB-DETR with LORS stacks (``lors=``)."""


@MODELS.register_module()
class LorsDeformableDETR(LorsDetrStacksMixin, DeformableDETR):
    """mmdet's Deformable-DETR (also ``with_box_refine`` / ``as_two_stage``)
    with LORS stacks (``lors=``).

    mmcv's ``MultiScaleDeformableAttention`` is left as it is: its four
    ``nn.Linear`` maps (``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``) become LORS maps, and its own init (zero
    offsets weight, the sampling grid as offsets bias) runs on the stock
    modules in ``init_weights``.
    """


@MODELS.register_module()
class LorsDINO(LorsDetrStacksMixin, DINO):
    """mmdet's DINO with LORS stacks (``lors=``)."""


@MODELS.register_module()
class LorsDDQDETR(LorsDetrStacksMixin, DDQDETR):
    """mmdet's DDQ-DETR with LORS stacks (``lors=``)."""
