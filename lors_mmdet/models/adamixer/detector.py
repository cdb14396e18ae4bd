"""The AdaMixer detector."""
from torch import nn

from mmdet.models.detectors import SparseRCNN
from mmdet.registry import MODELS
from lors_mmdet.lors import LorsStackConfig
from ..lors_stacks import LorsStacksMixin
from .decoder import LorsAdaMixerDecoder

# The static projections of a stage shared by default with ``model.lors``:
# self-attention, sampling-offset generator, FFN (not the adaptive mixing,
# which LORS-AdaMixer already shares, nor the small cls / reg branches).
DEFAULT_STATIC_INCLUDE = ('attention', 'sampling_offset_generator', 'ffn')


@MODELS.register_module()
class AdaMixer(LorsStacksMixin, SparseRCNN):
    """AdaMixer: A Fast-Converging Query-Based Object Detector (Gao et al.,
    CVPR 2022, https://arxiv.org/abs/2203.16507).

    Structurally a Sparse R-CNN: backbone, a channel-mapping neck
    (:class:`AdaMixerChannelMapping`), initial queries as the "RPN"
    (:class:`AdaMixerQueryGenerator`) and a cascade decoder as the RoI head
    (:class:`AdaMixerDecoder`, or :class:`LorsAdaMixerDecoder` for
    LORS-AdaMixer).

    ``lors=dict(decoder=dict(...))`` (optional) shares the static layers of
    the decoder stages (``roi_head.bbox_head``) with private low-rank
    residuals, the DETR family's ``model.lors`` key: a
    :class:`~lors_mmdet.lors.LorsStackConfig` dict whose ``include``
    defaults to the stage's self-attention, sampling-offset generator and
    FFN. The shared weights are registered once on the decoder
    (``roi_head.lors_bbox_head``). The adaptive mixing of LORS-AdaMixer,
    already shared by its decoder, cannot be included.

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

    def _check_lors_stack(self, part: str, owner: nn.Module, layers: str,
                          config: LorsStackConfig) -> None:
        if not isinstance(owner, LorsAdaMixerDecoder):
            return
        mixing = owner.bbox_head[0].adaptive_mixing
        picked = [
            f'adaptive_mixing.{path}'
            for path, module in mixing.named_modules()
            if isinstance(module, nn.Linear)
            and config.select([f'adaptive_mixing.{path}'], check=False)
        ]
        if picked:
            raise ValueError(
                f'{config.key}.include selects {picked}, parts of '
                'LORS-AdaMixer\'s adaptive mixing: the decoder already shares '
                'it across the stages (roi_head.shared_mixing_generator, '
                'shared_mixing_out_proj) and keeps these parts private per '
                'stage (adaptive_terms K_i, core_sizes, out_proj_ranks); '
                f'add \'adaptive_mixing\' to {config.key}.exclude or include '
                f'only static layers, e.g. {list(DEFAULT_STATIC_INCLUDE)}')
