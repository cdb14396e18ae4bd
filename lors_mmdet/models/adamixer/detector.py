"""The AdaMixer detector, and LORS-AdaMixer as AdaMixer + ``model.lors``."""
import re
import warnings
from typing import Dict, Mapping

import torch
from torch import Tensor, nn

from mmdet.models.detectors import SparseRCNN
from mmdet.registry import MODELS
from lors_mmdet.lors import LorsStack, find_lors_stacks
from ..lors_stacks import LorsStacksMixin

# The static projections of a stage shared by default with ``model.lors``:
# self-attention, sampling-offset generator, FFN (not the small cls / reg
# branches). LORS-AdaMixer's configs name their own (the mixing's out_proj).
DEFAULT_STATIC_INCLUDE = ('attention', 'sampling_offset_generator', 'ffn')
MIXING_GENERATOR = 'adaptive_mixing.parameter_generator'
MIXING_OUT_PROJ = 'adaptive_mixing.out_proj'

# State-dict keys of the former LORS-AdaMixer decoder classes (before the
# surgery built LORS-AdaMixer) -> today's; {s} = stage.
_STACK = 'roi_head.lors_bbox_head.shared.0.'
_FORMER_KEYS = (
    (re.compile(r'^roi_head\.shared_mixing_generator\.(.*)$'),
     _STACK + MIXING_GENERATOR + r'.\1'),
    (re.compile(r'^roi_head\.shared_mixing_out_proj\.(.*)$'),
     _STACK + MIXING_OUT_PROJ + r'.\1'),
    (re.compile(r'^roi_head\.bbox_head\.(\d+)\.adaptive_mixing\.generator\.'
                r'(?:lors_)?core_generator\.(.*)$'),
     r'roi_head.bbox_head.\1.' + MIXING_GENERATOR + r'.lors_core_generator.\2'),
    (re.compile(r'^roi_head\.bbox_head\.(\d+)\.adaptive_mixing\.generator\.'
                r'(lors_[LR]\.\d+)$'),
     r'roi_head.bbox_head.\1.' + MIXING_GENERATOR + r'.\2'),
)


def migrate_former_lors_keys(state_dict: Mapping[str, Tensor],
                             prefix: str = '') -> Dict[str, Tensor]:
    """Rename the keys of a LORS-AdaMixer checkpoint written by this plugin
    before LORS-AdaMixer was AdaMixer + ``model.lors`` (a one-time key
    migration; the tensors are the same).

    Args:
        state_dict: a state dict (keys under ``prefix``).
        prefix: the detector's key prefix in ``state_dict``.

    Returns:
        ``{key: tensor}`` with today's keys; equal to ``state_dict`` when it
        holds none of the former ones.
    """
    migrated = {}
    for key, value in state_dict.items():
        local = key[len(prefix):] if key.startswith(prefix) else None
        if local is not None:
            for pattern, new in _FORMER_KEYS:
                if pattern.match(local):
                    key = prefix + pattern.sub(new, local)
                    break
        migrated[key] = value
    return migrated


@torch.no_grad()
def init_published_lors_mixing(stack: LorsStack) -> None:
    """LORS-AdaMixer's published init of the mixing, after the stock init
    and the surgery's re-derivation of ``stack``: each shared output
    projection gets nn.Linear's default init and every private one a zero
    bias (the authors register the shared projection outside the stages'
    xavier init). The shared generator keeps stage 0's init (zero weight,
    nn.Linear's default bias, as published) and the private residuals the
    surgery's (zero; ``L``, ``R``, ``A`` by ``factor_init``).

    Args:
        stack: the stack of the decoder stages; nothing is done unless its
            mixing generator is adaptive and its ``out_proj`` shared.
    """
    if MIXING_GENERATOR not in stack.adaptive_plans or \
            MIXING_OUT_PROJ not in stack.plans:
        return
    for group in range(len(stack.layer_groups)):
        stack.shared_linear(group, MIXING_OUT_PROJ).reset_parameters()
    for lors in stack.lors_linears(MIXING_OUT_PROJ):
        nn.init.zeros_(lors.bias)


@MODELS.register_module()
class AdaMixer(LorsStacksMixin, SparseRCNN):
    """AdaMixer: A Fast-Converging Query-Based Object Detector (Gao et al.,
    CVPR 2022, https://arxiv.org/abs/2203.16507), and with ``lors`` its
    LORS versions, LORS-AdaMixer (Li et al., CVPR 2024) included.

    Structurally a Sparse R-CNN: backbone, a channel-mapping neck
    (:class:`AdaMixerChannelMapping`), initial queries as the "RPN"
    (:class:`AdaMixerQueryGenerator`) and a cascade decoder as the RoI head
    (:class:`AdaMixerDecoder`).

    ``lors=dict(decoder=dict(...))`` makes the decoder stages
    (``roi_head.bbox_head``) a LORS stack by the surgery, its shared weights
    registered once on the decoder (``roi_head.lors_bbox_head``): a
    :class:`~lors_mmdet.lors.LorsStackConfig` dict whose ``include``
    defaults to the stage's self-attention, sampling-offset generator and
    FFN. With ``adaptive=dict(...)`` the mixing generator (which declares
    its M and S, :meth:`AdaptiveMixing.lors_generated`) becomes one shared
    generator plus each stage's private adaptive residual; with
    ``include=['adaptive_mixing.out_proj']`` that is the published
    LORS-AdaMixer (configs/_base_/models/lors-adamixer_decoder.py), whose
    init :func:`init_published_lors_mixing` completes.

    A LORS-AdaMixer checkpoint written before LORS-AdaMixer was built this
    way loads as it is (:func:`migrate_former_lors_keys`).

    Args:
        lors: ``dict(decoder=...)`` or None (stock stages).
        *args, **kwargs: Sparse R-CNN's arguments.
    """

    lors_stack_paths = {'decoder': 'roi_head.bbox_head'}
    lors_stack_defaults = {'decoder': dict(include=DEFAULT_STATIC_INCLUDE)}
    lors_missing_parts = {
        'encoder': 'AdaMixer has no encoder (the LORS stack is the decoder '
                   'stages, roi_head.bbox_head); use lors.decoder'
    }

    @classmethod
    def stock_type(cls) -> str:
        """AdaMixer without ``lors`` is the stock model itself."""
        return 'AdaMixer'

    def init_weights(self) -> None:
        """The stock init, the stacks from it, then the published init of
        LORS-AdaMixer's mixing."""
        super().init_weights()
        for _, stack in find_lors_stacks(self):
            init_published_lors_mixing(stack)

    def _load_from_state_dict(self, state_dict: Mapping[str, Tensor],
                              prefix: str, *args, **kwargs) -> None:
        """Migrate former LORS-AdaMixer keys in place, then load."""
        migrated = migrate_former_lors_keys(state_dict, prefix)
        if list(migrated) != list(state_dict):
            warnings.warn('this checkpoint has the state-dict keys of the '
                          'former LORS-AdaMixer decoder classes; they were '
                          'renamed to the LORS stack\'s keys while loading')
            state_dict.clear()  # the caller's dict: it lists the keys left
            state_dict.update(migrated)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)
