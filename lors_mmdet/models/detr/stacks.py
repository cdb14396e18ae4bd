"""LORS encoders and decoders for mmdet's DETR family, by stack surgery.

DETR, Conditional-DETR, DAB-DETR, Deformable-DETR (plain, ``with_box_refine``,
``as_two_stage``), DINO and DDQ-DETR: one mixin, one config key.

mmdet builds its own detector, unchanged; then
:func:`~lors_mmdet.lors.apply_lors` turns the ``layers`` of its encoder and /
or decoder into LORS stacks, the shared weights registered once on the
encoder / decoder. One config key::

    model = dict(
        type='LorsDETR',            # or LorsConditionalDETR, LorsDABDETR,
        ...,                        #    LorsDeformableDETR, LorsDINO,
                                    #    LorsDDQDETR: mmdet's arguments
        lors=dict(
            decoder=dict(rank=16, ranks={'ffn.*': 32}, groups=None),
            encoder=dict(rank=32, exclude=['self_attn.sampling_offsets'])))

Each of ``encoder`` / ``decoder`` is a
:class:`~lors_mmdet.lors.LorsStackConfig` (``rank``, ``num_terms``,
``ranks``, ``include``, ``exclude``, ``groups``, ``init``); a part left out
stays stock.
"""
from typing import Dict, List, Mapping, Optional, Tuple

from mmdet.models.detectors import (DABDETR, DDQDETR, DETR, DINO,
                                    ConditionalDETR, DeformableDETR)
from mmdet.registry import MODELS

from lors_mmdet.lors import (LorsStack, LorsStackConfig, apply_lors,
                             find_lors_stacks, init_as_stock)
from ..distill import PredictionDistillMixin

LORS_PARTS = ('encoder', 'decoder')


def parse_lors_cfg(lors: Optional[Mapping],
                   key: str = 'lors') -> Dict[str, LorsStackConfig]:
    """Validate ``lors=dict(encoder=..., decoder=...)``.

    Args:
        lors: the dict, or None (no LORS stack).
        key: its place in the user's config, for error messages.

    Returns:
        ``{part: LorsStackConfig}`` of the parts given (not None).
    """
    if lors is None:
        return {}
    if not isinstance(lors, Mapping):
        raise TypeError(f'{key} must be a dict with keys {LORS_PARTS}, got '
                        f'{type(lors).__name__}')
    unknown = sorted(set(lors) - set(LORS_PARTS))
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in {key}; allowed: '
                         f'{list(LORS_PARTS)}')
    return {
        part: LorsStackConfig.from_dict(cfg, f'{key}.{part}')
        for part, cfg in lors.items() if cfg is not None
    }


class LorsStacksMixin(PredictionDistillMixin):
    """Adds ``lors=dict(encoder=..., decoder=...)`` to a DETR-family detector.

    After mmdet's ``_init_layers`` the selected stacks become LORS stacks
    (nothing built and thrown away, no layer subclassed). ``init_weights``
    runs mmdet's own init on the stock modules (it xavier-initialises every
    matrix, mmcv's deformable attention has its own init) and re-derives the
    LORS stacks from the result (``init='fresh'``: each shared weight = the
    first layer's freshly initialised weight, private residuals zero), in
    place: the optimizer, built by mmengine before ``init_weights``, keeps
    the parameters the model uses.

    Optional ``distill=dict(...)``: prediction distillation from a frozen
    stock teacher during a fine-tune (:mod:`lors_mmdet.models.distill`).

    Args:
        lors: ``dict(encoder=..., decoder=...)`` of
            :class:`~lors_mmdet.lors.LorsStackConfig` dicts.
        *args, **kwargs: the detector's arguments (and ``distill``).
    """

    def __init__(self, *args, lors: Optional[Mapping] = None,
                 **kwargs) -> None:
        # Set before mmdet's __init__, which calls _init_layers.
        self.lors_cfg = parse_lors_cfg(lors)
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        super()._init_layers()
        for part, config in self.lors_cfg.items():
            apply_lors(getattr(self, part), 'layers', config)

    def init_weights(self) -> None:
        """mmdet's init on the stock modules, then the LORS stacks from it."""
        with init_as_stock(self):
            super().init_weights()

    def lors_stacks(self) -> List[Tuple[str, LorsStack]]:
        """``(path, stack)`` of the model's LORS stacks (for tools)."""
        return find_lors_stacks(self)


@MODELS.register_module()
class LorsDETR(LorsStacksMixin, DETR):
    """mmdet's DETR with LORS encoder / decoder stacks (``lors=``)."""


@MODELS.register_module()
class LorsConditionalDETR(LorsStacksMixin, ConditionalDETR):
    """mmdet's Conditional-DETR with LORS stacks (``lors=``).

    The ``cross_attn.qpos_proj`` only the first decoder layer has stays a
    private layer of it.
    """


@MODELS.register_module()
class LorsDABDETR(LorsStacksMixin, DABDETR):
    """mmdet's DAB-DETR with LORS stacks (``lors=``)."""


@MODELS.register_module()
class LorsDeformableDETR(LorsStacksMixin, DeformableDETR):
    """mmdet's Deformable-DETR (also ``with_box_refine`` / ``as_two_stage``)
    with LORS stacks (``lors=``).

    mmcv's ``MultiScaleDeformableAttention`` is left as it is: its four
    ``nn.Linear`` maps (``sampling_offsets``, ``attention_weights``,
    ``value_proj``, ``output_proj``) become LORS maps, and its own init (zero
    offsets weight, the sampling grid as offsets bias) runs on the stock
    modules in ``init_weights``.
    """


@MODELS.register_module()
class LorsDINO(LorsStacksMixin, DINO):
    """mmdet's DINO with LORS stacks (``lors=``)."""


@MODELS.register_module()
class LorsDDQDETR(LorsStacksMixin, DDQDETR):
    """mmdet's DDQ-DETR with LORS stacks (``lors=``)."""
