"""LORS decoders for Deformable-DETR and DINO, subclassing mmdet's own.

The decoder owns the stack: one :class:`~lors_mmdet.lors.SharedLinear` per
projection kind, registered once under ``shared.<group>.<name>``. Decoder
layer ``i`` holds only its private parts (the LORS factors and biases of every
projection, its LayerNorms). Everything else - the forward passes of the
decoder and of its layers, box refinement, DINO's look-forward-twice and
denoising masks - is mmdet's code.
"""
import copy
from typing import Dict, Iterator, List, Tuple

import torch
from mmcv.cnn import build_norm_layer
from mmdet.models.layers import (DeformableDetrTransformerDecoder,
                                 DeformableDetrTransformerDecoderLayer,
                                 DinoTransformerDecoder)
from mmdet.utils import OptConfigType
from mmengine.model import ModuleList
from torch import nn

from lors_mmdet.lors import LorsLinear, SharedLinear
from .adaptive import AdaptiveLorsLinear
from .attention import LorsMultiheadAttention, LorsMultiScaleDeformableAttention
from .ffn import LorsFFN, ffn_linear_paths
from .lors_config import (CROSS_ATTN_PROJECTIONS, SELF_ATTN_PROJECTIONS, Plan,
                          ProjectionPlan, ProjectionShape, build_lors_plan,
                          ffn_projection_names)

Projections = Dict[str, Dict[str, LorsLinear]]


def decoder_projection_shapes(
        layer_cfg: dict) -> Dict[str, Dict[str, ProjectionShape]]:
    """Shapes of the linear maps of an mmdet Deformable-DETR decoder layer.

    Read from a stock layer built from ``layer_cfg``, so every default
    (heads, levels, points, value_proj_ratio, feedforward channels, biases) is
    mmdet's / mmcv's own.
    """
    stock = DeformableDetrTransformerDecoderLayer(**copy.deepcopy(layer_cfg))
    attn = stock.self_attn.attn
    if attn.in_proj_weight is None:
        raise ValueError('self_attn_cfg with kdim/vdim different from '
                         'embed_dims is not supported by the LORS decoder')
    embed_dims = attn.embed_dim
    has_bias = attn.in_proj_bias is not None
    self_attn = {
        name: ProjectionShape(embed_dims, embed_dims, has_bias)
        for name in SELF_ATTN_PROJECTIONS
    }
    cross_attn = {}
    for name in CROSS_ATTN_PROJECTIONS:
        linear = getattr(stock.cross_attn, name)
        cross_attn[name] = ProjectionShape(linear.in_features,
                                           linear.out_features,
                                           linear.bias is not None)
    ffn = {}
    for name, path in zip(ffn_projection_names(stock.ffn.num_fcs),
                          ffn_linear_paths(stock.ffn.num_fcs)):
        linear = stock.ffn.layers.get_submodule(path)
        ffn[name] = ProjectionShape(linear.in_features, linear.out_features,
                                    linear.bias is not None)
    return dict(self_attn=self_attn, cross_attn=cross_attn, ffn=ffn)


def _build_layer_projection(shared: SharedLinear, plan: ProjectionPlan,
                            layer: int) -> LorsLinear:
    rank, num_terms = plan.ranks[layer], plan.num_terms[layer]
    if plan.adaptive is None:
        return LorsLinear(shared, rank, num_terms, plan.shape.bias)
    return AdaptiveLorsLinear(shared, rank, num_terms, plan.shape.bias,
                              core_size=plan.adaptive.core_size,
                              adaptive_terms=plan.adaptive.num_terms)


class LorsDeformableDetrTransformerDecoderLayer(
        DeformableDetrTransformerDecoderLayer):
    """mmdet's Deformable-DETR decoder layer with LORS projections.

    Args:
        projections: ``{group: {name: LorsLinear}}`` of this layer, built by
            the decoder (which registers the shared weights).
        **kwargs: the arguments of mmdet's
            ``DeformableDetrTransformerDecoderLayer``.
    """

    def __init__(self, projections: Projections, **kwargs) -> None:
        # A plain attribute (nn.Module is not initialised yet) read by
        # _init_layers, which mmdet calls from __init__.
        self._pending_projections = projections
        super().__init__(**kwargs)

    def _init_layers(self) -> None:
        projections = self.__dict__.pop('_pending_projections')
        self.self_attn = LorsMultiheadAttention(projections['self_attn'],
                                                **self.self_attn_cfg)
        self.cross_attn = LorsMultiScaleDeformableAttention(
            projections['cross_attn'], **self.cross_attn_cfg)
        self.embed_dims = self.self_attn.embed_dims
        ffn = projections['ffn']
        self.ffn = LorsFFN([ffn[name] for name in ffn], **self.ffn_cfg)
        self.norms = ModuleList([
            build_norm_layer(self.norm_cfg, self.embed_dims)[1]
            for _ in range(3)
        ])

    def projection(self, group: str, name: str) -> LorsLinear:
        """The LORS map ``name`` of ``group`` in this layer."""
        if group == 'ffn':
            return self.ffn.projections[ffn_projection_names(
                self.ffn.num_fcs).index(name)]
        return getattr(getattr(self, group), name)


class LorsDeformableDetrTransformerDecoder(DeformableDetrTransformerDecoder):
    """mmdet's Deformable-DETR decoder whose layers share their weights.

    Args:
        lors: the ``lors`` config (see :mod:`.lors_config`); None means every
            projection at the default rank.
        *args, **kwargs: the arguments of mmdet's
            ``DeformableDetrTransformerDecoder``.
    """

    def __init__(self, *args, lors: OptConfigType = None, **kwargs) -> None:
        # A plain attribute read by _init_layers (called from mmdet __init__).
        self._pending_lors_cfg = lors
        super().__init__(*args, **kwargs)

    def _init_layers(self) -> None:
        lors_cfg = self.__dict__.pop('_pending_lors_cfg')
        shapes = decoder_projection_shapes(self.layer_cfg)
        self.lors_plan: Plan = build_lors_plan(lors_cfg, shapes,
                                               self.num_layers)
        self.shared = nn.ModuleDict({
            group: nn.ModuleDict({
                name: SharedLinear(plan.shape.in_features,
                                   plan.shape.out_features, self.num_layers)
                for name, plan in group_plan.items()
            })
            for group, group_plan in self.lors_plan.items()
        })
        layers = []
        for i in range(self.num_layers):
            projections = {
                group: {
                    name: _build_layer_projection(self.shared[group][name],
                                                  plan, i)
                    for name, plan in group_plan.items()
                }
                for group, group_plan in self.lors_plan.items()
            }
            layers.append(
                LorsDeformableDetrTransformerDecoderLayer(
                    projections, **copy.deepcopy(self.layer_cfg)))
        self.layers = ModuleList(layers)
        self.embed_dims = self.layers[0].embed_dims
        if self.post_norm_cfg is not None:
            raise ValueError(f'{self._get_name()} has no post norm (as '
                             "mmdet's), got post_norm_cfg="
                             f'{self.post_norm_cfg}; set it to None')

    def lors_projections(
            self) -> Iterator[Tuple[str, str, SharedLinear, List[LorsLinear]]]:
        """Yield ``(group, name, shared, [layer maps])`` per projection kind."""
        for group, group_plan in self.lors_plan.items():
            for name in group_plan:
                yield (group, name, self.shared[group][name],
                       [layer.projection(group, name)
                        for layer in self.layers])

    @torch.no_grad()
    def reset_lors_parameters(self) -> None:
        """Re-establish the LORS init after mmdet's DETR ``init_weights``.

        mmdet xavier-initialises every matrix of the decoder (the zero-init
        ``B`` factors included), then re-runs mmcv's deformable-attention init.
        Here the shared weights get what the stock layer's weights get
        (self-attention q/k/v: xavier over the packed ``in_proj_weight``;
        sampling_offsets and attention_weights: zero; the rest: xavier) and
        every layer's private parts the LORS / stock init (A kaiming, B zero,
        biases as in the stock layer, sampling_offsets bias = mmcv's grid).
        """
        shared = self.shared
        packed = torch.empty(
            3 * shared.self_attn.query_proj.out_features,
            shared.self_attn.query_proj.in_features,
            device=shared.self_attn.query_proj.weight.device)
        nn.init.xavier_uniform_(packed)
        for name, chunk in zip(('query_proj', 'key_proj', 'value_proj'),
                               packed.chunk(3)):
            shared.self_attn[name].weight.copy_(chunk)
        nn.init.xavier_uniform_(shared.self_attn.out_proj.weight)
        nn.init.zeros_(shared.cross_attn.sampling_offsets.weight)
        nn.init.zeros_(shared.cross_attn.attention_weights.weight)
        nn.init.xavier_uniform_(shared.cross_attn.value_proj.weight)
        nn.init.xavier_uniform_(shared.cross_attn.output_proj.weight)
        for linear in shared.ffn.values():
            nn.init.xavier_uniform_(linear.weight)
        for layer in self.layers:
            layer.self_attn.reset_private_parameters()
            layer.cross_attn.reset_private_parameters()
            layer.ffn.reset_private_parameters()

    def init_weights(self) -> None:
        super().init_weights()
        self.reset_lors_parameters()


class LorsDinoTransformerDecoder(DinoTransformerDecoder,
                                 LorsDeformableDetrTransformerDecoder):
    """mmdet's DINO decoder whose layers share their weights.

    The method order puts mmdet's ``DinoTransformerDecoder`` first (its
    forward, ``ref_point_head`` and final norm) and the LORS Deformable-DETR
    decoder next: DINO's ``_init_layers`` calls ``super()._init_layers()``,
    which builds the LORS layers.

    Args:
        lors: the ``lors`` config (see :mod:`.lors_config`).
        *args, **kwargs: the arguments of mmdet's ``DinoTransformerDecoder``.
    """
