"""Static LORS: a stack of linear maps sharing one weight.

Layer ``i`` of a stack of ``N`` linear maps uses

    W_i = W_shared + B_i @ A_i,    A_i: (K_i * r_i, in),  B_i: (out, K_i * r_i)

(``K_i`` terms of rank ``r_i`` are stored as one pair of rank ``K_i * r_i``).
``W_shared`` is registered once, on the module owning the stack; each layer
keeps an unregistered reference to it, so ``state_dict()`` and
``parameters()`` of the owner see every tensor exactly once.
"""
import math
from typing import List, Sequence, Tuple, Union

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from ._validate import check_positive_int, per_layer

PATHS = ('auto', 'dense', 'low_rank')
# How the non-zero private factors start (the zero ones always start at 0):
# 'linear': nn.Linear's default, U(+-1/sqrt(fan_in)) (kaiming_uniform_ with
#     a=sqrt(5)), the LoRA convention;
# 'kaiming': torch's kaiming_uniform_ with default arguments on the stored
#     tensor, U(+-sqrt(6/fan_in)), as the published LORS-AdaMixer.
FACTOR_INITS = ('linear', 'kaiming')


def check_factor_init(value: object) -> str:
    """Return ``value`` if it names a factor init, else raise."""
    if value not in FACTOR_INITS:
        raise ValueError(f'factor_init must be one of {FACTOR_INITS}, got '
                         f'{value!r}')
    return value


class SharedLinear(nn.Module):
    """The shared weight of a static LORS stack.

    Register it once, on the module that owns the stack; hand it to every
    :class:`LorsLinear` of the stack.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        num_layers: number of layers sharing the weight (for accounting).
    """

    def __init__(self, in_features: int, out_features: int,
                 num_layers: int) -> None:
        super().__init__()
        self.in_features = check_positive_int(in_features, 'in_features')
        self.out_features = check_positive_int(out_features, 'out_features')
        self.num_layers = check_positive_int(num_layers, 'num_layers')
        self.weight = nn.Parameter(torch.empty(out_features, in_features))
        self.reset_parameters()

    def reset_parameters(self) -> None:
        """nn.Linear's default weight init."""
        nn.init.kaiming_uniform_(self.weight, a=math.sqrt(5))

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, '
                f'out_features={self.out_features}, '
                f'num_layers={self.num_layers}')


class LorsLinear(nn.Module):
    """One layer of a static LORS stack: ``y = x (W_shared + B A)^T + bias``.

    Registers only its private tensors (``lors_A``, ``lors_B``, ``bias``); the
    :class:`SharedLinear` is referenced, not registered. Moving, casting or
    loading the owner of the shared module therefore updates every layer.

    Args:
        shared: the stack's shared weight.
        rank: rank ``r`` of each low-rank term.
        num_terms: number ``K`` of low-rank terms. Defaults to 1.
        bias: whether the layer has a private bias. Defaults to True.
        factor_init: init of ``A``: ``'linear'`` (default, nn.Linear's and
            LoRA's, bound ``1/sqrt(in)``) or ``'kaiming'`` (kaiming_uniform_
            with default arguments, bound ``sqrt(6/in)``, as published for
            LORS-AdaMixer).
    """

    def __init__(self, shared: SharedLinear, rank: int, num_terms: int = 1,
                 bias: bool = True, factor_init: str = 'linear') -> None:
        super().__init__()
        if not isinstance(shared, SharedLinear):
            raise TypeError(f'shared must be a SharedLinear, got '
                            f'{type(shared).__name__}')
        check_positive_int(rank, 'rank')
        check_positive_int(num_terms, 'num_terms')
        in_features, out_features = shared.in_features, shared.out_features
        total_rank = rank * num_terms
        if total_rank > min(in_features, out_features):
            raise ValueError(
                f'rank * num_terms must be <= min(in_features, out_features)'
                f' = {min(in_features, out_features)}, got rank={rank}, '
                f'num_terms={num_terms}')
        # Stored in __dict__ (not in _modules): not registered, yet deepcopy
        # and pickle keep it pointing at the owner's copy through their memo.
        object.__setattr__(self, '_shared', shared)
        self.in_features = in_features
        self.out_features = out_features
        self.rank = rank
        self.num_terms = num_terms
        self.factor_init = check_factor_init(factor_init)
        factory = dict(device=shared.weight.device, dtype=shared.weight.dtype)
        self.lors_A = nn.Parameter(torch.empty(total_rank, in_features,
                                               **factory))
        self.lors_B = nn.Parameter(torch.empty(out_features, total_rank,
                                               **factory))
        if bias:
            self.bias = nn.Parameter(torch.empty(out_features, **factory))
        else:
            self.register_parameter('bias', None)
        self.reset_parameters()

    @property
    def shared(self) -> SharedLinear:
        """The stack's shared weight module (not registered in this layer)."""
        return self._shared

    def reset_parameters(self) -> None:
        """Factors as :meth:`reset_factors`, bias zero: the layer equals
        the shared."""
        self.reset_factors()
        if self.bias is not None:
            nn.init.zeros_(self.bias)

    def reset_factors(self) -> None:
        """A kaiming-uniform (``factor_init``), B zero: zero residual."""
        if self.factor_init == 'kaiming':
            nn.init.kaiming_uniform_(self.lors_A)
        else:
            nn.init.kaiming_uniform_(self.lors_A, a=math.sqrt(5))
        nn.init.zeros_(self.lors_B)

    @property
    def weight(self) -> Tensor:
        """The effective weight ``W_shared + B @ A`` (differentiable)."""
        return torch.addmm(self.shared.weight, self.lors_B, self.lors_A)

    def forward(self, x: Tensor, path: str = 'auto') -> Tensor:
        """Apply the layer to ``x`` of shape (..., in_features).

        Args:
            x: the input.
            path: ``'dense'`` forms the effective weight once and applies it;
                ``'low_rank'`` computes ``x W_shared^T + (x A^T) B^T``;
                ``'auto'`` (default) picks the one with fewer multiply-adds.
                All give the same result up to rounding.
        """
        if path not in PATHS:
            raise ValueError(f'path must be one of {PATHS}, got {path!r}')
        if path == 'auto':
            path = 'dense' if self.prefers_dense(x) else 'low_rank'
        if path == 'dense':
            return F.linear(x, self.weight, self.bias)
        out = F.linear(x, self.shared.weight, self.bias)
        return out + F.linear(F.linear(x, self.lors_A), self.lors_B)

    def prefers_dense(self, x: Tensor) -> bool:
        """Whether forming the dense weight needs fewer multiply-adds.

        Both paths pay ``rows * in * out`` for the shared product; forming
        ``B A`` adds ``in * out * R``, the low-rank path
        ``rows * R * (in + out)``.
        """
        rows = x.numel() // self.in_features
        return (self.in_features * self.out_features <
                rows * (self.in_features + self.out_features))

    @torch.no_grad()
    def to_linear(self) -> nn.Linear:
        """A plain ``nn.Linear`` with the merged weight and bias."""
        weight = self.weight
        linear = nn.Linear(self.in_features, self.out_features,
                           bias=self.bias is not None, device=weight.device,
                           dtype=weight.dtype)
        linear.weight.copy_(weight)
        if self.bias is not None:
            linear.bias.copy_(self.bias)
        return linear

    def extra_repr(self) -> str:
        return (f'in_features={self.in_features}, '
                f'out_features={self.out_features}, rank={self.rank}, '
                f'num_terms={self.num_terms}, bias={self.bias is not None}, '
                f'factor_init={self.factor_init!r}')


def build_lors_linears(
    in_features: int,
    out_features: int,
    num_layers: int,
    rank: Union[int, Sequence[int]],
    num_terms: Union[int, Sequence[int]] = 1,
    bias: bool = True,
) -> Tuple[SharedLinear, List[LorsLinear]]:
    """Build the shared weight and the per-layer maps of a static LORS stack.

    Register the returned :class:`SharedLinear` once on the stack's owner and
    ``layers[i]`` inside layer ``i``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        num_layers: number of layers ``N``.
        rank: rank per term, an int or a list of ``N`` ints.
        num_terms: number of terms, an int or a list of ``N`` ints.
        bias: whether each layer has a private bias.
    """
    ranks = per_layer(rank, num_layers, 'rank')
    terms = per_layer(num_terms, num_layers, 'num_terms')
    shared = SharedLinear(in_features, out_features, num_layers)
    layers = [LorsLinear(shared, r, k, bias) for r, k in zip(ranks, terms)]
    return shared, layers


class LorsLinearStack(nn.Module):
    """A static LORS stack owning both its shared weight and its layers.

    For library users (a ViT, an LLM...): ``stack[i](x)`` applies layer ``i``.

    Args:
        in_features: size of each input sample.
        out_features: size of each output sample.
        num_layers: number of layers ``N``.
        rank: rank per term, an int or a list of ``N`` ints.
        num_terms: number of terms, an int or a list of ``N`` ints.
        bias: whether each layer has a private bias.
    """

    def __init__(self, in_features: int, out_features: int, num_layers: int,
                 rank: Union[int, Sequence[int]],
                 num_terms: Union[int, Sequence[int]] = 1,
                 bias: bool = True) -> None:
        super().__init__()
        shared, layers = build_lors_linears(in_features, out_features,
                                            num_layers, rank, num_terms, bias)
        self.shared = shared
        self.layers = nn.ModuleList(layers)

    def __getitem__(self, index: int) -> LorsLinear:
        return self.layers[index]

    def __len__(self) -> int:
        return len(self.layers)

    def __iter__(self):
        return iter(self.layers)
