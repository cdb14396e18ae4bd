"""A drop-in ``nn.MultiheadAttention`` with four separate projections.

``nn.MultiheadAttention`` packs the query, key and value maps into one
``in_proj_weight``; LORS needs each map as its own module so that it can be a
:class:`~lors_mmdet.lors.LorsLinear`. :class:`LorsAttention` keeps the call
contract of ``nn.MultiheadAttention`` (arguments, masks, ``batch_first``,
unbatched inputs, the returned attention weights), so wrappers around it (e.g.
mmcv's ``MultiheadAttention``) keep working unchanged.
"""
import math
from typing import Optional, Tuple

import torch
import torch.nn.functional as F
from torch import Tensor, nn

PROJECTIONS = ('q_proj', 'k_proj', 'v_proj', 'out_proj')


def _additive_bias(mask: Tensor, dtype: torch.dtype, name: str) -> Tensor:
    """A bool mask (True = do not attend) or a float mask as a float bias."""
    if mask.dtype == torch.bool:
        return torch.zeros(mask.shape, dtype=dtype,
                           device=mask.device).masked_fill(mask, float('-inf'))
    if not torch.is_floating_point(mask):
        raise TypeError(f'{name} must be a bool or float tensor, got '
                        f'{mask.dtype}')
    return mask.to(dtype)


class LorsAttention(nn.Module):
    """``nn.MultiheadAttention`` with ``q_proj``, ``k_proj``, ``v_proj``,
    ``out_proj`` as separate modules (``nn.Linear`` or ``LorsLinear``).

    Computes the function of ``nn.MultiheadAttention`` (without
    ``add_bias_kv`` / ``add_zero_attn``) with
    ``F.scaled_dot_product_attention``; when the attention weights are asked
    for (``need_weights=True``, the default of ``nn.MultiheadAttention``) it
    uses an explicit softmax instead and returns them, after dropout as
    ``nn.MultiheadAttention`` does.

    There is no packed ``in_proj_weight``: ``in_proj_weight`` and
    ``in_proj_bias`` read as None and ``_qkv_same_embed_dim`` as False, so code
    probing for ``nn.MultiheadAttention``'s fused fast path (torch's
    ``TransformerEncoderLayer``) takes its regular path.

    Args:
        embed_dim: total dimension of the model.
        num_heads: number of parallel heads; divides ``embed_dim``.
        dropout: dropout probability on the attention weights.
        bias: whether the projections have biases.
        kdim: features of the keys (default ``embed_dim``).
        vdim: features of the values (default ``embed_dim``).
        batch_first: inputs and output are (batch, seq, feature).
        device: device of the new projections.
        dtype: dtype of the new projections.
    """

    in_proj_weight = None
    in_proj_bias = None
    _qkv_same_embed_dim = False

    def __init__(self, embed_dim: int, num_heads: int, dropout: float = 0.,
                 bias: bool = True, kdim: Optional[int] = None,
                 vdim: Optional[int] = None, batch_first: bool = False,
                 device=None, dtype=None) -> None:
        super().__init__()
        if embed_dim <= 0 or num_heads <= 0 or embed_dim % num_heads:
            raise ValueError(f'embed_dim must be a positive multiple of '
                             f'num_heads, got embed_dim={embed_dim}, '
                             f'num_heads={num_heads}')
        self.embed_dim = embed_dim
        self.kdim = embed_dim if kdim is None else kdim
        self.vdim = embed_dim if vdim is None else vdim
        self.num_heads = num_heads
        self.head_dim = embed_dim // num_heads
        self.dropout = dropout
        self.batch_first = batch_first
        factory = dict(device=device, dtype=dtype)
        self.q_proj = nn.Linear(embed_dim, embed_dim, bias, **factory)
        self.k_proj = nn.Linear(self.kdim, embed_dim, bias, **factory)
        self.v_proj = nn.Linear(self.vdim, embed_dim, bias, **factory)
        self.out_proj = nn.Linear(embed_dim, embed_dim, bias, **factory)

    @property
    def has_bias(self) -> bool:
        return self.out_proj.bias is not None

    @classmethod
    @torch.no_grad()
    def from_multihead_attention(
            cls, attention: nn.MultiheadAttention) -> 'LorsAttention':
        """The same function as ``attention``, its weights copied and split.

        Raises:
            ValueError: ``attention`` has ``add_bias_kv`` / ``add_zero_attn``.
        """
        if attention.bias_k is not None or attention.add_zero_attn:
            raise ValueError('nn.MultiheadAttention with add_bias_kv or '
                             'add_zero_attn is not supported')
        if attention._qkv_same_embed_dim:
            weights = attention.in_proj_weight.chunk(3)
        else:
            weights = (attention.q_proj_weight, attention.k_proj_weight,
                       attention.v_proj_weight)
        bias = attention.in_proj_bias is not None
        new = cls(attention.embed_dim, attention.num_heads, attention.dropout,
                  bias, attention.kdim, attention.vdim, attention.batch_first,
                  device=weights[0].device, dtype=weights[0].dtype)
        biases = attention.in_proj_bias.chunk(3) if bias else (None, ) * 3
        for proj, weight, b in zip((new.q_proj, new.k_proj, new.v_proj),
                                   weights, biases):
            proj.weight.copy_(weight)
            if bias:
                proj.bias.copy_(b)
        new.out_proj.weight.copy_(attention.out_proj.weight)
        if bias:
            new.out_proj.bias.copy_(attention.out_proj.bias)
        return new.train(attention.training)

    @torch.no_grad()
    def to_multihead_attention(self) -> nn.MultiheadAttention:
        """A stock ``nn.MultiheadAttention`` computing the same function.

        LORS projections are merged (``W_shared + B A``); the state-dict keys
        are the stock ones (``in_proj_weight`` or ``q/k/v_proj_weight``,
        ``in_proj_bias``, ``out_proj.*``).
        """
        weights = [getattr(self, name).weight for name in PROJECTIONS]
        attention = nn.MultiheadAttention(
            self.embed_dim, self.num_heads, self.dropout, self.has_bias,
            kdim=self.kdim, vdim=self.vdim, batch_first=self.batch_first,
            device=weights[0].device, dtype=weights[0].dtype)
        if attention._qkv_same_embed_dim:
            attention.in_proj_weight.copy_(torch.cat(weights[:3]))
        else:
            attention.q_proj_weight.copy_(weights[0])
            attention.k_proj_weight.copy_(weights[1])
            attention.v_proj_weight.copy_(weights[2])
        attention.out_proj.weight.copy_(weights[3])
        if self.has_bias:
            attention.in_proj_bias.copy_(
                torch.cat([getattr(self, name).bias
                           for name in PROJECTIONS[:3]]))
            attention.out_proj.bias.copy_(self.out_proj.bias)
        return attention.train(self.training)

    def _heads(self, x: Tensor) -> Tensor:
        """(batch, seq, embed_dim) -> (batch, heads, seq, head_dim)."""
        return x.unflatten(-1, (self.num_heads, self.head_dim)).transpose(1, 2)

    def _mask_bias(self, attn_mask: Optional[Tensor],
                   key_padding_mask: Optional[Tensor], batch: int,
                   num_queries: int, num_keys: int,
                   dtype: torch.dtype) -> Optional[Tensor]:
        """The masks as one additive bias broadcastable to
        (batch, heads, queries, keys)."""
        bias = None
        if attn_mask is not None:
            bias = _additive_bias(attn_mask, dtype, 'attn_mask')
            if bias.dim() == 2:
                bias = bias.view(1, 1, num_queries, num_keys)
            elif bias.dim() == 3:  # (batch * heads, queries, keys)
                bias = bias.view(batch, self.num_heads, num_queries, num_keys)
            else:
                raise ValueError(f'attn_mask must be 2-D or 3-D, got shape '
                                 f'{tuple(attn_mask.shape)}')
        if key_padding_mask is not None:
            padding = _additive_bias(key_padding_mask, dtype,
                                     'key_padding_mask').view(
                                         batch, 1, 1, num_keys)
            bias = padding if bias is None else bias + padding
        return bias

    def forward(self,
                query: Tensor,
                key: Tensor,
                value: Tensor,
                key_padding_mask: Optional[Tensor] = None,
                need_weights: bool = True,
                attn_mask: Optional[Tensor] = None,
                average_attn_weights: bool = True,
                is_causal: bool = False) -> Tuple[Tensor, Optional[Tensor]]:
        """As ``nn.MultiheadAttention.forward``.

        Args:
            query: (L, E), (L, B, E) or, with ``batch_first``, (B, L, E).
            key: (S, kdim), (S, B, kdim) or (B, S, kdim).
            value: (S, vdim), (S, B, vdim) or (B, S, vdim).
            key_padding_mask: (B, S) or (S, ); True / -inf = ignore the key.
            need_weights: also return the attention weights.
            attn_mask: (L, S) or (B * heads, L, S); bool True = not allowed,
                float = added to the logits.
            average_attn_weights: average the returned weights over heads.
            is_causal: a hint that ``attn_mask`` is the causal mask; as in
                ``nn.MultiheadAttention`` it needs ``attn_mask``.

        Returns:
            The output, shaped like ``query`` with ``embed_dim`` features, and
            the weights (B, L, S) / (B, heads, L, S) (unbatched: without B),
            or None.
        """
        if is_causal and attn_mask is None:
            raise RuntimeError('Need attn_mask if specifying the is_causal '
                               'hint (as nn.MultiheadAttention)')
        batched = query.dim() == 3
        if not batched:  # one sequence: a batch of one
            query, key, value = (x.unsqueeze(0) for x in (query, key, value))
            if key_padding_mask is not None:
                key_padding_mask = key_padding_mask.unsqueeze(0)
            if attn_mask is not None and attn_mask.dim() == 3:
                attn_mask = attn_mask.unsqueeze(0).flatten(0, 1)
        elif not self.batch_first:
            query, key, value = (x.transpose(0, 1)
                                 for x in (query, key, value))
        batch, num_queries, _ = query.shape
        num_keys = key.shape[1]
        q = self._heads(self.q_proj(query))
        k = self._heads(self.k_proj(key))
        v = self._heads(self.v_proj(value))
        bias = self._mask_bias(attn_mask, key_padding_mask, batch,
                               num_queries, num_keys, q.dtype)
        dropout = self.dropout if self.training else 0.
        weights = None
        if need_weights:
            logits = q @ k.transpose(-2, -1) / math.sqrt(self.head_dim)
            if bias is not None:
                logits = logits + bias
            weights = F.dropout(logits.softmax(-1), dropout)
            out = weights @ v
            if average_attn_weights:
                weights = weights.mean(1)
            if not batched:
                weights = weights.squeeze(0)
        else:
            out = F.scaled_dot_product_attention(q, k, v, attn_mask=bias,
                                                 dropout_p=dropout)
        out = self.out_proj(out.transpose(1, 2).flatten(-2))
        if not batched:
            out = out.squeeze(0)
        elif not self.batch_first:
            out = out.transpose(0, 1)
        return out, weights

    def extra_repr(self) -> str:
        return (f'embed_dim={self.embed_dim}, num_heads={self.num_heads}, '
                f'dropout={self.dropout}, batch_first={self.batch_first}')
