"""LORS versions of the attention modules of mmdet's DETR decoder layers.

Both compute exactly the function of the mmcv module they replace; only the
linear maps are LORS maps (:class:`~lors_mmdet.lors.LorsLinear`), handed in by
the decoder that owns the shared weights.
"""
import copy
import warnings
from typing import Mapping, Optional

import torch
import torch.nn.functional as F
from mmcv.cnn.bricks.drop import build_dropout
from mmcv.ops import MultiScaleDeformableAttention
from mmengine.model import BaseModule
from torch import Tensor, nn

from lors_mmdet.lors import LorsLinear

_NN_MHA_OPTIONS = ('add_bias_kv', 'add_zero_attn', 'kdim', 'vdim')


def _check_projection(projection: nn.Module, name: str, in_features: int,
                      out_features: int) -> None:
    if not isinstance(projection, LorsLinear):
        raise TypeError(f'projection {name!r} must be a LorsLinear, got '
                        f'{type(projection).__name__}')
    if (projection.in_features, projection.out_features) != (in_features,
                                                            out_features):
        raise ValueError(
            f'projection {name!r} maps {projection.in_features} -> '
            f'{projection.out_features}, expected {in_features} -> '
            f'{out_features}')


def _additive_mask(attn_mask: Optional[Tensor],
                   key_padding_mask: Optional[Tensor], batch_size: int,
                   num_heads: int, num_queries: int, num_keys: int,
                   dtype: torch.dtype) -> Optional[Tensor]:
    """Merge the masks of ``nn.MultiheadAttention`` into one additive bias.

    Boolean (or byte) masks mark positions NOT to attend, float masks are added
    to the attention logits, as in ``nn.MultiheadAttention``.

    Returns:
        None or a tensor broadcastable to (bs, heads, num_queries, num_keys).
    """

    def to_bias(mask: Tensor) -> Tensor:
        if mask.dtype in (torch.bool, torch.uint8):
            return torch.zeros(mask.shape, dtype=dtype,
                               device=mask.device).masked_fill(
                                   mask.bool(), float('-inf'))
        return mask.to(dtype)

    bias = None
    if attn_mask is not None:
        if attn_mask.dim() == 2:
            bias = to_bias(attn_mask).view(1, 1, num_queries, num_keys)
        elif attn_mask.dim() == 3:  # (bs * heads, L, S)
            bias = to_bias(attn_mask).view(batch_size, num_heads,
                                           num_queries, num_keys)
        else:
            raise ValueError(f'attn_mask must be 2D or 3D, got shape '
                             f'{tuple(attn_mask.shape)}')
    if key_padding_mask is not None:
        padding = to_bias(key_padding_mask).view(batch_size, 1, 1, num_keys)
        bias = padding if bias is None else bias + padding
    return bias


class LorsMultiheadAttention(BaseModule):
    """mmcv's ``MultiheadAttention`` with LORS query/key/value/output maps.

    Same arguments, same forward signature and the same function as
    ``mmcv.cnn.bricks.transformer.MultiheadAttention`` (which wraps
    ``nn.MultiheadAttention``): positional encodings added to query and key,
    scaled dot-product attention with dropout ``attn_drop`` on the attention
    weights, the output projection, ``proj_drop``, then
    ``identity + dropout_layer(out)``. Only the packed ``in_proj_weight`` of
    ``nn.MultiheadAttention`` becomes three separate LORS maps.

    Args:
        projections: ``{'query_proj', 'key_proj', 'value_proj', 'out_proj'}``
            -> :class:`LorsLinear` (embed_dims -> embed_dims).
        embed_dims: the embedding dimension.
        num_heads: number of parallel attention heads.
        attn_drop: dropout on the attention weights. Defaults to 0.
        proj_drop: dropout after the output projection. Defaults to 0.
        dropout_layer: the dropout applied before adding the identity.
        init_cfg: mmengine init config. Defaults to None.
        batch_first: whether inputs are (batch, n, embed_dims).
        **kwargs: ``dropout`` (deprecated, as in mmcv: sets ``attn_drop``
            and the drop prob of ``dropout_layer``) and ``bias`` (read by the
            decoder when it builds the projections).
    """

    PROJECTIONS = ('query_proj', 'key_proj', 'value_proj', 'out_proj')

    def __init__(self,
                 projections: Mapping[str, LorsLinear],
                 embed_dims: int,
                 num_heads: int,
                 attn_drop: float = 0.,
                 proj_drop: float = 0.,
                 dropout_layer: Optional[dict] = dict(
                     type='Dropout', drop_prob=0.),
                 init_cfg: Optional[dict] = None,
                 batch_first: bool = False,
                 **kwargs) -> None:
        super().__init__(init_cfg)
        unsupported = sorted(set(kwargs) & set(_NN_MHA_OPTIONS))
        unknown = sorted(set(kwargs) - {'dropout', 'bias', *_NN_MHA_OPTIONS})
        if unsupported or unknown:
            raise ValueError(
                f'self_attn_cfg options {unsupported + unknown} are not '
                'supported by LorsMultiheadAttention (supported: embed_dims, '
                'num_heads, attn_drop, proj_drop, dropout_layer, dropout, '
                'bias, batch_first, init_cfg)')
        if embed_dims % num_heads != 0:
            raise ValueError(f'embed_dims must be divisible by num_heads, got '
                             f'{embed_dims} and {num_heads}')
        dropout_layer = copy.deepcopy(dropout_layer)
        if 'dropout' in kwargs:  # mmcv's deprecated alias, same meaning
            attn_drop = kwargs['dropout']
            if dropout_layer is not None:
                dropout_layer['drop_prob'] = kwargs['dropout']
        self.embed_dims = embed_dims
        self.num_heads = num_heads
        self.batch_first = batch_first
        self.attn_drop = attn_drop
        for name in self.PROJECTIONS:
            _check_projection(projections[name], name, embed_dims, embed_dims)
            setattr(self, name, projections[name])
        self.proj_drop = nn.Dropout(proj_drop)
        self.dropout_layer = build_dropout(
            dropout_layer) if dropout_layer else nn.Identity()

    def init_weights(self) -> None:
        super().init_weights()
        self.reset_private_parameters()

    @torch.no_grad()
    def reset_private_parameters(self) -> None:
        """A kaiming, B zero, biases zero (``nn.MultiheadAttention``'s)."""
        for name in self.PROJECTIONS:
            getattr(self, name).reset_parameters()

    def forward(self,
                query: Tensor,
                key: Optional[Tensor] = None,
                value: Optional[Tensor] = None,
                identity: Optional[Tensor] = None,
                query_pos: Optional[Tensor] = None,
                key_pos: Optional[Tensor] = None,
                attn_mask: Optional[Tensor] = None,
                key_padding_mask: Optional[Tensor] = None,
                **kwargs) -> Tensor:
        """Same arguments and result as mmcv's ``MultiheadAttention``."""
        if key is None:
            key = query
        if value is None:
            value = key
        if identity is None:
            identity = query
        if key_pos is None and query_pos is not None:
            if query_pos.shape == key.shape:
                key_pos = query_pos
            else:
                warnings.warn('position encoding of key is missing in '
                              f'{self.__class__.__name__}.')
        if query_pos is not None:
            query = query + query_pos
        if key_pos is not None:
            key = key + key_pos
        if not self.batch_first:
            query, key, value = (t.transpose(0, 1)
                                 for t in (query, key, value))

        batch_size, num_queries, _ = query.shape
        num_keys = key.shape[1]

        def split_heads(x: Tensor) -> Tensor:
            return x.unflatten(-1, (self.num_heads, -1)).transpose(1, 2)

        q = split_heads(self.query_proj(query))
        k = split_heads(self.key_proj(key))
        v = split_heads(self.value_proj(value))
        mask = _additive_mask(attn_mask, key_padding_mask, batch_size,
                              self.num_heads, num_queries, num_keys, q.dtype)
        out = F.scaled_dot_product_attention(
            q, k, v, attn_mask=mask,
            dropout_p=self.attn_drop if self.training else 0.)
        out = self.out_proj(out.transpose(1, 2).flatten(2))
        if not self.batch_first:
            out = out.transpose(0, 1)
        return identity + self.dropout_layer(self.proj_drop(out))


class LorsMultiScaleDeformableAttention(MultiScaleDeformableAttention):
    """mmcv's ``MultiScaleDeformableAttention`` with LORS linear maps.

    The forward is mmcv's own: it runs the compiled
    ``MultiScaleDeformableAttnFunction`` on CUDA and
    ``multi_scale_deformable_attn_pytorch`` on CPU. Only the four ``nn.Linear``
    of the mmcv module are replaced by :class:`LorsLinear` maps under the same
    names, so ``paramwise_cfg`` keys such as ``sampling_offsets`` still match.

    Args:
        projections: ``{'sampling_offsets', 'attention_weights',
            'value_proj', 'output_proj'}`` -> :class:`LorsLinear`.
        **kwargs: the arguments of mmcv's ``MultiScaleDeformableAttention``.
    """

    PROJECTIONS = ('sampling_offsets', 'attention_weights', 'value_proj',
                   'output_proj')

    def __init__(self, projections: Mapping[str, LorsLinear],
                 **kwargs) -> None:
        super().__init__(**kwargs)
        # mmcv has just initialised its own sampling_offsets bias to the
        # per-head direction grid; keep it as the private biases' init.
        self.register_buffer('sampling_offsets_grid',
                             self.sampling_offsets.bias.detach().clone(),
                             persistent=False)
        for name in self.PROJECTIONS:
            stock = getattr(self, name)
            _check_projection(projections[name], name, stock.in_features,
                              stock.out_features)
            setattr(self, name, projections[name])
        self.init_weights()

    def init_weights(self) -> None:
        """mmcv's init while mmcv builds its own maps, then the private init.

        Called by mmcv's ``__init__`` before the LORS maps are installed and by
        mmdet's DETR ``init_weights``. The shared weights are initialised by
        the decoder that owns them.
        """
        if not isinstance(self.sampling_offsets, LorsLinear):
            super().init_weights()
            return
        self.reset_private_parameters()
        self._is_init = True

    @torch.no_grad()
    def reset_private_parameters(self) -> None:
        """A kaiming, B zero, biases as mmcv's: zero, sampling_offsets grid."""
        for name in self.PROJECTIONS:
            getattr(self, name).reset_parameters()
        self.sampling_offsets.bias.copy_(self.sampling_offsets_grid)
