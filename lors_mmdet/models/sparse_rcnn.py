"""LORS for mmdet's Sparse R-CNN and QueryInst: the RoI head's stages as LORS
stacks, by the same surgery and the same ``model.lors`` key as the DETR family
and AdaMixer.

Each stage of Sparse R-CNN (``DIIHead``) makes its instance-interactive
convolution from the proposal feature: mmdet's ``DynamicConv`` generates, per
proposal, ``param_in`` (in_channels x feat_channels) and ``param_out``
(feat_channels x out_channels) with one ``dynamic_layer`` Linear. Declared
here (:func:`~lors_mmdet.lors.declare_generated`), that generator is an
adaptive target: with ``adaptive=dict(...)`` it becomes one shared generator
on the RoI head plus each stage's private adaptive residual, exactly as
LORS-AdaMixer's mixing::

    model = dict(
        type='LorsSparseRCNN',          # or LorsQueryInst: mmdet's arguments
        ...,
        lors=dict(decoder=dict(
            rank=16,                    # the static targets' residual rank
            adaptive=dict(core_size=16, adaptive_terms=[1, 1, 2, 2, 3, 3]))))

Without ``adaptive`` the generator is an ordinary projection (a static
target if ``include`` selects it). ``decoder`` is the box stages
(``roi_head.bbox_head``); QueryInst also has ``mask_decoder``, its mask stages
(``roi_head.mask_head``), whose convolutions are not LORS targets: only their
``DynamicConv`` generators (with ``adaptive``).
"""
from mmdet.models.detectors import QueryInst, SparseRCNN
from mmdet.models.layers.transformer import DynamicConv
from mmdet.registry import MODELS
from torch import nn

from lors_mmdet.lors import declare_generated

from .lors_stacks import LorsStacksMixin

# the stage's static maps shared by default: self-attention, the dynamic
# convolution's output projection and the FFN (not the cls / reg branches)
DEFAULT_STATIC_INCLUDE = ['attention', 'instance_interactive_conv.fc_layer',
                          'ffn']


def dynamic_conv_matrices(conv: nn.Module) -> dict:
    """What mmdet's ``DynamicConv`` generates per proposal, in the layout of
    its ``forward`` (``param_in`` then ``param_out``, each row-major)."""
    return dict(generator='dynamic_layer',
                shapes=[(conv.in_channels, conv.feat_channels),
                        (conv.feat_channels, conv.out_channels)])


declare_generated(DynamicConv, dynamic_conv_matrices)

_NO_ENCODER = ('{} has no encoder (the LORS stacks are the RoI head\'s '
               'stages, roi_head.bbox_head); use lors.decoder')


@MODELS.register_module()
class LorsSparseRCNN(LorsStacksMixin, SparseRCNN):
    """mmdet's Sparse R-CNN with its box stages as a LORS stack (``lors=``).

    Args:
        lors: ``dict(decoder=...)``, a
            :class:`~lors_mmdet.lors.LorsStackConfig` dict whose ``include``
            defaults to the stage's attention, dynamic-conv output projection
            and FFN.
        *args, **kwargs: Sparse R-CNN's arguments.
    """

    lors_stack_paths = {'decoder': 'roi_head.bbox_head'}
    lors_stack_defaults = {'decoder': dict(include=DEFAULT_STATIC_INCLUDE)}
    lors_missing_parts = {'encoder': _NO_ENCODER.format('Sparse R-CNN')}


@MODELS.register_module()
class LorsQueryInst(LorsStacksMixin, QueryInst):
    """mmdet's QueryInst with its box and mask stages as LORS stacks
    (``lors=dict(decoder=..., mask_decoder=...)``).

    Args:
        lors: ``decoder`` (box stages, as :class:`LorsSparseRCNN`) and / or
            ``mask_decoder`` (mask stages: their ``DynamicConv`` generators,
            with ``adaptive``).
        *args, **kwargs: QueryInst's arguments.
    """

    lors_stack_paths = {'decoder': 'roi_head.bbox_head',
                        'mask_decoder': 'roi_head.mask_head'}
    lors_stack_defaults = {'decoder': dict(include=DEFAULT_STATIC_INCLUDE),
                           'mask_decoder': dict(exclude=['*'])}
    lors_missing_parts = {'encoder': _NO_ENCODER.format('QueryInst')}
