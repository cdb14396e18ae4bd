"""Stack surgery: any stack of identical modules -> a LORS stack, in place.

The way peft injects LoRA: the model is built as usual, then
:func:`apply_lors` replaces, inside each of the N layers, the selected
``nn.Linear`` modules (and transposed linears, ``transformers``' ``Conv1D``:
:mod:`.targets`) by :class:`~lors_mmdet.lors.LorsLinear` maps and the
selected ``nn.MultiheadAttention`` modules by a
:class:`~lors_mmdet.lors.LorsAttention` whose projections are LORS maps. The
shared weights are registered once, on the owner of the stack, in a
:class:`LorsStack` module that also records what was replaced;
:func:`merge_lors` undoes it (stock modules, stock state-dict keys) and
:func:`find_lors_stacks` lists the stacks of a model for tools.

The adaptive target kind (``config.adaptive``): a module that declares the
matrices it generates from its query (:mod:`.generated`) gets its generator
replaced by a :class:`~lors_mmdet.lors.adaptive.LorsGeneratedLinear` on a
:class:`~lors_mmdet.lors.SharedGenerator` registered in the stack.
"""
import contextlib
import copy
from typing import (Dict, Iterator, List, Mapping, Optional, Sequence, Tuple,
                    Union)

import torch
from torch import nn

from .adaptive import LorsGeneratedLinear, SharedGenerator
from .attention import PROJECTIONS, LorsAttention
from .generated import generated_weights
from .merge import lors_from_dense
from .stack_config import AdaptivePlan, LorsStackConfig, ProjectionPlan
from .static import LorsLinear, SharedLinear
from .targets import build_linear, linear_spec, linear_weight

_CONTAINERS = (nn.ModuleList, nn.Sequential, nn.ModuleDict)
# (in_features, out_features, bias, type, dtype, device) of a projection
Spec = Tuple[int, int, bool, type, torch.dtype, torch.device]
# (groups, shapes, Spec of the generator Linear) of a declared generator
Generated = Tuple[int, Tuple[Tuple[int, int], ...], Spec]
# Hooks that see the module's call (arguments, output, gradients): the LORS
# module has the call contract of the module it replaces, so they move with
# it. The flag says which kind of backward hook the dicts hold.
_CALL_HOOKS = ('_forward_hooks', '_forward_hooks_with_kwargs',
               '_forward_hooks_always_called', '_forward_pre_hooks',
               '_forward_pre_hooks_with_kwargs', '_backward_hooks',
               '_backward_pre_hooks', '_is_full_backward_hook')
# Hooks that see the module's own parameters and state-dict keys, which the
# LORS module does not have.
_STATE_HOOKS = ('_state_dict_hooks', '_state_dict_pre_hooks',
                '_load_state_dict_pre_hooks', '_load_state_dict_post_hooks')
# Starts the name of every tensor or module that only a LORS model has: the
# stacks (lors_<layers path>) and the private factors (LorsLinear's lors_A /
# lors_B, LorsAdaptive's lors_L / lors_R).
LORS_NAME_PREFIX = 'lors_'


def is_lors_key(key: str) -> bool:
    """Whether state-dict key ``key`` names a tensor of a LORS model that no
    stock model has (a path component starts with ``lors_``).

    Args:
        key: a state-dict key, e.g.
            ``'decoder.layers.0.ffn.layers.1.lors_A'``.
    """
    return any(part.startswith(LORS_NAME_PREFIX) for part in key.split('.'))


class LorsStack(nn.Module):
    """The shared weights of one LORS stack, registered on its owner.

    Made by :func:`apply_lors`. Holds ``shared[g].<path>`` (a
    :class:`SharedLinear` per group ``g`` and projection path, a
    :class:`SharedGenerator` per group and generator path) and a record of
    the surgery; the layers themselves stay where they are (referenced, not
    registered).

    Attributes:
        layers: the N layers (tuple, not registered here).
        layers_path: owner-relative path of their container, or None.
        config: the :class:`LorsStackConfig` applied.
        plans: ``{projection path: ProjectionPlan}`` (ranks, terms per layer).
        layer_groups: the layer indices of each group of adjacent layers.
        attentions: paths of the ``nn.MultiheadAttention`` modules turned into
            :class:`LorsAttention`.
        stock_types: ``{projection or generator path: class}`` restored by
            merging.
        adaptive_plans: ``{generator path: AdaptivePlan}`` of the declared
            generators made adaptive (empty without ``config.adaptive``).
    """

    def __init__(self,
                 layers: Sequence[nn.Module],
                 layers_path: Optional[str],
                 config: LorsStackConfig,
                 plans: Mapping[str, ProjectionPlan],
                 layer_groups: List[List[int]],
                 attentions: Sequence[str],
                 stock_types: Mapping[str, type],
                 adaptive_plans: Optional[Mapping[str, AdaptivePlan]] = None
                 ) -> None:
        super().__init__()
        # Not registered: the layers belong to their container on the owner.
        object.__setattr__(self, '_layers', tuple(layers))
        self.layers_path = layers_path
        self.config = config
        self.plans = dict(plans)
        self.layer_groups = [list(g) for g in layer_groups]
        self.attentions = tuple(attentions)
        self.stock_types = dict(stock_types)
        self.adaptive_plans = dict(adaptive_plans or {})
        self.shared = nn.ModuleList(nn.Module() for _ in layer_groups)
        # torch's TransformerEncoder only: its nested-tensor setting before
        self.owner_use_nested_tensor: Optional[bool] = None

    @property
    def layers(self) -> Tuple[nn.Module, ...]:
        return self._layers

    def add_shared(self, group: int, path: str,
                   shared: Union[SharedLinear, SharedGenerator]) -> None:
        node = self.shared[group]
        *parents, leaf = path.split('.')
        for part in parents:
            if part not in node._modules:
                node.add_module(part, nn.Module())
            node = node._modules[part]
        node.add_module(leaf, shared)

    @property
    def replaced_paths(self) -> List[str]:
        """Paths of the modules the surgery put into each layer: the
        attentions, the projections outside them and the generators."""
        return [
            path for path in self.plans
            if path.rpartition('.')[0] not in self.attentions
        ] + list(self.attentions) + list(self.adaptive_plans)

    def shared_linear(self, group: int, path: str) -> SharedLinear:
        """The shared weight of projection ``path`` in group ``group``."""
        return self.shared[group].get_submodule(path)

    def shared_generator(self, group: int, path: str) -> SharedGenerator:
        """The shared generator of generator ``path`` in group ``group``."""
        return self.shared[group].get_submodule(path)

    def lors_generators(self, path: str) -> List[LorsGeneratedLinear]:
        """The N adaptive LORS generators at ``path``, one per layer."""
        return [layer.get_submodule(path) for layer in self.layers]

    def group_of(self, layer: int) -> int:
        """The group index of layer ``layer``."""
        for index, group in enumerate(self.layer_groups):
            if layer in group:
                return index
        raise IndexError(f'layer {layer} is not in this stack of '
                         f'{len(self.layers)} layers')

    def lors_linears(self, path: str) -> List[LorsLinear]:
        """The N LORS maps of projection ``path``, one per layer."""
        return [layer.get_submodule(path) for layer in self.layers]

    @torch.no_grad()
    def reset_private_parameters(self) -> None:
        """Private residuals back to zero (``B = 0``, ``A`` as its
        ``factor_init``; core generators zero, ``L`` / ``R`` as their
        ``factor_init``).

        Biases and shared weights are left alone. Call it after a framework's
        init that touches every matrix (mmdet's xavier init of DETR).
        """
        for path in self.plans:
            for lors in self.lors_linears(path):
                lors.reset_factors()
        for path in self.adaptive_plans:
            for lors in self.lors_generators(path):
                lors.reset_parameters()

    @torch.no_grad()
    def merge_layers(self) -> None:
        """Put stock modules with the merged weights back into the layers.

        Use :func:`merge_lors`, which also removes this module from its
        owner.
        """
        for layer in self.layers:
            for path in self.plans:
                lors = layer.get_submodule(path)
                stock = build_linear(self.stock_types[path], lors.weight,
                                     lors.bias)
                _replace(layer, path, stock.train(lors.training))
            for path in self.attentions:
                attention = layer.get_submodule(path)
                _replace(layer, path, attention.to_multihead_attention())
            for path in self.adaptive_plans:
                lors = layer.get_submodule(path)
                folded = _to_linear_in_float64(lors)
                stock = build_linear(self.stock_types[path], folded.weight,
                                     folded.bias)
                _replace(layer, path, stock.train(lors.training))

    def extra_repr(self) -> str:
        return (f'layers={len(self.layers)}, layers_path={self.layers_path!r}'
                f', layer_groups={[len(g) for g in self.layer_groups]}, '
                f'init={self.config.init!r}, projections={list(self.plans)}'
                f', generators={list(self.adaptive_plans)}')


def _to_linear_in_float64(lors: LorsGeneratedLinear) -> nn.Linear:
    """``lors.to_linear()`` folded in float64 and cast back: the fold sums
    many products, float64 keeps it below the model dtype's rounding."""
    dtype = lors.lors_core_generator.weight.dtype
    work = copy.deepcopy(lors)  # its shared generator is copied with it
    work.shared.double()
    return work.double().to_linear().to(dtype)


def _replace(root: nn.Module, path: str, module: nn.Module) -> None:
    """Put ``module`` at ``path`` of ``root``, with the call hooks of the
    module it replaces (the same hook dicts: a user's handle still removes
    the hook)."""
    parent, _, name = path.rpartition('.')
    owner = root.get_submodule(parent) if parent else root
    old = getattr(owner, name)
    for attr in _CALL_HOOKS:
        setattr(module, attr, getattr(old, attr))
    setattr(owner, name, module)


def _projections(layer: nn.Module) -> Dict[str, Spec]:
    """``{path: (in_features, out_features, bias, type, dtype, device)}`` of
    a layer's projections: its ``nn.Linear`` and transposed linear modules
    (outside attentions) and the four maps of each ``nn.MultiheadAttention``
    (``<path>.q_proj`` ...), in module order.
    """
    found: Dict[str, Spec] = {}
    attentions = set()
    for path, module in layer.named_modules():
        if not path:
            continue
        if isinstance(module, nn.MultiheadAttention):
            attentions.add(path)
            bias = module.in_proj_bias is not None
            dim = module.embed_dim
            weight = module.out_proj.weight
            for name, in_features in zip(
                    PROJECTIONS, (dim, module.kdim, module.vdim, dim)):
                found[f'{path}.{name}'] = (in_features, dim, bias,
                                           nn.MultiheadAttention,
                                           weight.dtype, weight.device)
        elif path.rpartition('.')[0] not in attentions:
            spec = linear_spec(module)
            if spec is not None:
                found[path] = (*spec, type(module), module.weight.dtype,
                               module.weight.device)
    return found


def _generators(layer: nn.Module) -> Dict[str, Generated]:
    """``{generator path: (groups, shapes, linear)}`` of the modules of
    ``layer`` (itself included) that declare the matrices they generate;
    ``linear`` = the generator's (in, out, bias, type, dtype, device)."""
    found = {}
    for path, module in layer.named_modules():
        declared = generated_weights(module)
        if declared is None:
            continue
        full = f'{path}.{declared.generator}' if path else declared.generator
        generator = layer.get_submodule(full)
        found[full] = (declared.groups, declared.shapes,
                       (*linear_spec(generator), type(generator),
                        linear_weight(generator).dtype,
                        linear_weight(generator).device))
    return found


def _replaced_modules(layer: nn.Module,
                      paths: Sequence[str]) -> Dict[str, nn.Module]:
    """``{path: module}`` of what the surgery replaces in ``layer`` for the
    projections ``paths``: the projection, or its whole attention."""
    replaced = {}
    for path in paths:
        parent = path.rpartition('.')[0]
        if parent and isinstance(layer.get_submodule(parent),
                                 nn.MultiheadAttention):
            path = parent
        replaced[path] = layer.get_submodule(path)
    return replaced


def _check_ties_and_hooks(owner: nn.Module, layers: Sequence[nn.Module],
                          paths: Sequence[str], key: str,
                          generators: Sequence[str] = ()) -> None:
    """Refuse what replacing the selected modules would silently break.

    - A module or parameter that is reachable under another name in
      ``owner`` (tied weights, a module shared by two layers or aliased in
      one): the surgery gives each layer its own new modules, so the tie would
      be lost. Ties to modules outside ``owner`` are not visible here.
    - Hooks on a replaced module that see its parameters or state-dict keys,
      and any hook inside a replaced ``nn.MultiheadAttention`` (its
      ``out_proj`` is never called as a module by torch). Call hooks on the
      replaced module itself are kept (:func:`_replace`).
    """
    names: Dict[int, List[str]] = {}
    for name, module in owner.named_modules(remove_duplicate=False):
        names.setdefault(id(module), []).append(name)
    for name, param in owner.named_parameters(remove_duplicate=False):
        names.setdefault(id(param), []).append(name)

    def leave_out(path: str) -> str:
        # include / exclude select projections; generators go with adaptive
        if path in generators:
            return f'make it no adaptive target (drop {key}.adaptive)'
        return f'leave {path!r} out with {key}.exclude'

    for index, layer in enumerate(layers):
        layer_names = names[id(layer)]
        for path, module in _replaced_modules(layer,
                                              [*paths, *generators]).items():
            hint = (f'the surgery gives every layer its own new module and '
                    f'would untie it; untie it first, or {leave_out(path)}')
            own = {f'{prefix}.{path}' for prefix in layer_names}
            other = sorted(set(names[id(module)]) - own)
            if other:
                raise ValueError(
                    f'{key}: layer {index}\'s {path!r} is also {other[0]!r} '
                    f'of {type(owner).__name__} (the same '
                    f'{type(module).__name__} object): {hint}')
            for local, param in module.named_parameters(
                    remove_duplicate=False):
                allowed = {f'{name}.{local}' for name in own}
                other = sorted(set(names[id(param)]) - allowed)
                if other:
                    raise ValueError(
                        f'{key}: layer {index}\'s {path}.{local} is also '
                        f'{other[0]!r} of {type(owner).__name__} (tied '
                        f'parameters): {hint}')
            for attr in _STATE_HOOKS:
                if getattr(module, attr, None):
                    raise ValueError(
                        f'{key}: layer {index}\'s {path!r} has '
                        f'{attr.strip("_")}; they would see LORS parameters '
                        f'instead of {type(module).__name__}\'s: remove '
                        f'them or {leave_out(path)}')
            for sub_path, sub in module.named_modules():
                if sub_path and any(getattr(sub, attr, None)
                                    for attr in _CALL_HOOKS + _STATE_HOOKS
                                    if attr != '_is_full_backward_hook'):
                    raise ValueError(
                        f'{key}: layer {index}\'s {path}.{sub_path} has '
                        f'hooks, and the surgery replaces {path!r} as a '
                        f'whole: remove them or {leave_out(path)}')


def _check_layers(
        owner: nn.Module, layers: Sequence[nn.Module], name: str,
        config: LorsStackConfig
) -> Tuple[Dict[str, Spec], Dict[str, Generated]]:
    """Check the stack; return the projections common to all its layers
    and, with ``config.adaptive``, the generators they declare.

    A projection present in only some layers (Conditional-DETR drops the
    ``qpos_proj`` of all but the first decoder layer) is no stack member:
    it stays private. One that ``config`` selects must have the same type,
    shape, dtype and device in every layer, and no tie or hook that the
    surgery would lose; the others may differ (they stay private), e.g.
    LORS-AdaMixer's per-stage adaptive core generators. Declared generators
    (adaptive targets) must be the same in every layer; they are no
    projections then.
    """
    key = config.key
    if isinstance(owner, _CONTAINERS):
        raise TypeError(f'owner must be the module holding the stack, not a '
                        f'{type(owner).__name__} (its iteration would see '
                        f'the LorsStack)')
    if not layers:
        raise ValueError(f'{key}: the stack has no layers')
    if len(layers) == 1:
        raise ValueError(
            f'{key}: the stack has 1 layer; LORS shares weights across '
            f'layers, so one layer has nothing to share and its private '
            f'residuals would only add parameters: leave it stock')
    if len({id(layer) for layer in layers}) != len(layers):
        raise ValueError('the same module appears twice in the stack')
    if hasattr(owner, name):
        raise ValueError(f'owner already has an attribute {name!r}; pass '
                         f'another name')
    inside = {id(m) for m in owner.modules()}
    per_layer = [_projections(layer) for layer in layers]
    generated: Dict[str, Generated] = {}
    if config.adaptive is not None:
        declared = [_generators(layer) for layer in layers]
        generated = declared[0]
        for index, found in enumerate(declared):
            if found != generated:
                raise ValueError(
                    f'{config.key}.adaptive: layer {index} declares the '
                    f'generators {_describe_generators(found)}, layer 0 '
                    f'{_describe_generators(generated)}; only generators '
                    f'identical in every layer can be shared')
        per_layer = [{p: s for p, s in found.items() if p not in generated}
                     for found in per_layer]
    common = {
        path: spec
        for path, spec in per_layer[0].items()
        if all(path in found for found in per_layer)
    }
    for index, layer in enumerate(layers):
        if id(layer) not in inside:
            raise ValueError(f'layer {index} is not a submodule of the owner '
                             f'{type(owner).__name__}')
        if type(layer) is not type(layers[0]):
            raise ValueError(f'layer {index} is a {type(layer).__name__}, '
                             f'layer 0 a {type(layers[0]).__name__}')
    if not common and not generated:
        raise ValueError(f'the layers ({type(layers[0]).__name__}) have no '
                         f'nn.Linear, transposed linear (Conv1D) or '
                         f'nn.MultiheadAttention in common')
    selected = config.select(list(common)) if common else []
    for path in selected:
        for index, found in enumerate(per_layer):
            if found[path] != common[path]:
                raise ValueError(
                    f'{key}: layer {index} differs from layer 0 at {path!r}: '
                    f'(in, out, bias, type, dtype, device) = '
                    f'{_describe(found[path])}, layer 0 has '
                    f'{_describe(common[path])}; only a projection identical '
                    f'in every layer can be shared, and {key}.include / '
                    f'{key}.exclude select this one')
    _check_ties_and_hooks(owner, layers, selected, key, list(generated))
    return common, generated


def _describe_generators(found: Mapping[str, Generated]) -> str:
    return str({path: f'groups={groups}, shapes={list(shapes)}, '
                      f'{_describe(linear)}'
                for path, (groups, shapes, linear) in found.items()})


def _describe(spec: Spec) -> str:
    in_features, out_features, bias, cls, dtype, device = spec
    return (f'({in_features}, {out_features}, {bias}, {cls.__name__}, '
            f'{dtype}, {device})')


@torch.no_grad()
def apply_lors(owner: nn.Module,
               layers: Union[str, Sequence[nn.Module]],
               config: Union[None, Mapping, LorsStackConfig] = None,
               name: Optional[str] = None,
               key: str = 'lors') -> LorsStack:
    """Turn a stack of N identical layers into a LORS stack, in place.

    Inside each layer, every selected projection becomes a
    :class:`LorsLinear` on a :class:`SharedLinear` shared by the layers of
    its group; a selected ``nn.MultiheadAttention`` becomes a
    :class:`LorsAttention` (its other projections stay private
    ``nn.Linear``). The shared weights live in a :class:`LorsStack`
    registered on ``owner`` as ``name``. Initialisation (``config.init``):

    - ``'fresh'``: shared = the weights of the first layer of each group,
      ``B = 0`` (every layer then computes with those weights), biases kept
      per layer;
    - ``'dense'``: shared = the group's mean weight, layer ``i`` keeps the
      truncated SVD of ``W_i - mean`` (exact at rank ``'full'``).

    With ``config.adaptive``, every generator the layers declare
    (:mod:`.generated`) becomes a :class:`LorsGeneratedLinear` per layer on
    a :class:`SharedGenerator` of its group: shared = the first layer's
    generator (``'fresh'``; AdaMixer's zero-weight init when the stock model
    had it) or the group's mean generator (``'dense'``: exact only when the
    layers' generators are equal), private core generators zero, so each
    layer starts as the shared generator.

    Args:
        owner: the module that owns the stack (e.g. an encoder).
        layers: owner-relative path of a ``ModuleList`` / ``Sequential`` of
            the layers, or the layers (submodules of ``owner``).
        config: a :class:`LorsStackConfig` or its dict.
        name: attribute of the :class:`LorsStack` on ``owner``; defaults to
            ``'lors_' + layers`` (dots as underscores) for a path.
        key: where ``config`` sits in the user's config (error messages).

    Returns:
        The :class:`LorsStack` (also ``getattr(owner, name)``).
    """
    layers_path = None
    if isinstance(layers, str):
        layers_path = layers
        container = owner.get_submodule(layers)
        if not isinstance(container, (nn.ModuleList, nn.Sequential)):
            raise TypeError(f'{layers!r} must name a ModuleList or '
                            f'Sequential, got {type(container).__name__}')
        layers = list(container)
        name = name or LORS_NAME_PREFIX + layers_path.replace('.', '_')
    elif name is None:
        raise ValueError('name is needed when the layers are given as '
                         'modules')
    layers = list(layers)
    config = LorsStackConfig.from_dict(config, key)
    projections, generated = _check_layers(owner, layers, name, config)
    plans = config.plan({p: s[:2] for p, s in projections.items()},
                        len(layers),
                        allow_empty=bool(generated)) if projections else {}
    adaptive_plans = config.plan_adaptive(
        {p: g[:2] for p, g in generated.items()}, len(layers))
    layer_groups = config.group_layers(len(layers))

    attentions = sorted({
        path.rpartition('.')[0] for path in plans
        if isinstance(layers[0].get_submodule(path.rpartition('.')[0]),
                      nn.MultiheadAttention)
    })
    converted = []  # all first, so that an error leaves the layers as they are
    for index, layer in enumerate(layers):
        for path in attentions:
            try:
                converted.append((layer, path,
                                  LorsAttention.from_multihead_attention(
                                      layer.get_submodule(path))))
            except ValueError as error:
                raise ValueError(f'layer {index}, {path!r}: {error}') from None
    for layer, path, attention in converted:
        _replace(layer, path, attention)
    stock_types = {
        path: type(layers[0].get_submodule(path))
        for path in (*plans, *adaptive_plans)
    }

    stack = LorsStack(layers, layers_path, config, plans, layer_groups, attentions,
                      stock_types, adaptive_plans)
    for group_index, group in enumerate(layer_groups):
        for path, plan in plans.items():
            stocks = [layers[i].get_submodule(path) for i in group]
            ranks = [plan.ranks[i] for i in group]
            terms = [plan.num_terms[i] for i in group]
            has_bias = stocks[0].bias is not None
            if config.init == 'dense':
                shared, new_layers, _ = lors_from_dense(
                    [linear_weight(d) for d in stocks], ranks, terms,
                    [d.bias for d in stocks] if has_bias else None)
            else:
                weight = linear_weight(stocks[0])
                shared = SharedLinear(weight.shape[1], weight.shape[0],
                                      len(group)).to(weight)
                shared.weight.copy_(weight)
                new_layers = [
                    LorsLinear(shared, r, k, has_bias, config.factor_init)
                    for r, k in zip(ranks, terms)
                ]
                for stock, new in zip(stocks, new_layers):
                    if has_bias:
                        new.bias.copy_(stock.bias)
            stack.add_shared(group_index, path, shared)
            for i, stock, new in zip(group, stocks, new_layers):
                _replace(layers[i], path, new.train(stock.training))
        for path, plan in adaptive_plans.items():
            _share_generator(stack, group_index, path, plan)
    if isinstance(owner, nn.TransformerEncoder) and attentions:
        # Its fused fast path packs padded batches into nested tensors, made
        # for nn.MultiheadAttention's packed weights; merging turns it back.
        stack.owner_use_nested_tensor = owner.use_nested_tensor
        owner.use_nested_tensor = False
    owner.add_module(name, stack.train(owner.training))
    return stack


def _share_generator(stack: LorsStack, group_index: int, path: str,
                     plan: AdaptivePlan) -> None:
    """The adaptive target ``path`` of one group of layers: one
    :class:`SharedGenerator` registered in ``stack``, and in each layer a
    :class:`LorsGeneratedLinear` in place of its generator."""
    group = stack.layer_groups[group_index]
    adaptive = stack.config.adaptive
    stocks = [stack.layers[i].get_submodule(path) for i in group]
    weights = [linear_weight(d) for d in stocks]
    shared = SharedGenerator(weights[0].shape[1], plan.groups, plan.shapes,
                             len(group)).to(weights[0])
    if stack.config.init == 'dense':
        shared.generator.weight.copy_(torch.stack(weights).mean(0))
        shared.generator.bias.copy_(
            torch.stack([d.bias for d in stocks]).mean(0))
    else:
        shared.generator.weight.copy_(weights[0])
        shared.generator.bias.copy_(stocks[0].bias)
    stack.add_shared(group_index, path, shared)
    for i, stock in zip(group, stocks):
        new = LorsGeneratedLinear(
            shared,
            plan.core_sizes[i],
            plan.adaptive_terms[i],
            recompute=False,
            per_group_factors=adaptive.per_group_factors,
            factor_init=adaptive.factor_init)
        _replace(stack.layers[i], path, new.train(stock.training))


def find_lors_stacks(module: nn.Module) -> List[Tuple[str, LorsStack]]:
    """``(path, stack)`` of every :class:`LorsStack` in ``module``'s tree.

    The protocol for tools: the LORS layers of a stack are
    ``stack.lors_linears(path)`` for ``path`` in ``stack.plans``; its shared
    weights ``stack.shared_linear(group, path)``; its adaptive generators
    ``stack.lors_generators(path)`` for ``path`` in ``stack.adaptive_plans``,
    on ``stack.shared_generator(group, path)``.
    """
    return [(path, sub) for path, sub in module.named_modules()
            if isinstance(sub, LorsStack)]


def merge_lors(module: nn.Module,
               stacks: Optional[Sequence[LorsStack]] = None) -> int:
    """Merge LORS stacks back into stock modules, in place.

    Each LORS map becomes its original ``nn.Linear`` class with the weight
    ``W_shared + B A``, each :class:`LorsAttention` made by the surgery an
    ``nn.MultiheadAttention``, each :class:`LorsGeneratedLinear` its
    original generator class with the shared generator plus the folded
    private adaptive residual (exact: the residual is affine in the query,
    :meth:`LorsAdaptive.to_linear`); the :class:`LorsStack` is removed from
    its owner. The state dict then has the stock keys.

    Args:
        module: a model (or any module) containing the stacks' owners.
        stacks: the stacks to merge; default every stack in ``module``.

    Returns:
        The number of stacks merged.
    """
    wanted = None if stacks is None else {id(s) for s in stacks}
    merged = 0
    for owner in list(module.modules()):
        for child_name, child in list(owner.named_children()):
            if isinstance(child, LorsStack) and (wanted is None
                                                 or id(child) in wanted):
                child.merge_layers()
                delattr(owner, child_name)
                if child.owner_use_nested_tensor is not None:
                    owner.use_nested_tensor = child.owner_use_nested_tensor
                merged += 1
    if wanted is not None and merged != len(wanted):
        raise ValueError(f'{len(wanted) - merged} of the given stacks are '
                         f'not in the module')
    return merged


@contextlib.contextmanager
def init_as_stock(module: nn.Module) -> Iterator[None]:
    """Run an init written for the stock model, then re-derive the LORS
    stacks from it, keeping their parameter objects.

    Inside the block every LORS stack of ``module`` is merged: the layers hold
    stock ``nn.Linear`` / ``nn.MultiheadAttention`` modules, so a framework's
    init (mmdet's DETR ``init_weights``, mmcv's deformable attention init)
    runs exactly as on the stock model. On exit each stack is initialised
    from those weights by its config (``'fresh'``: shared = the first layer of
    each group, ``B = 0``, zero core generators) and the values are copied into the original LORS
    modules, which are put back: an optimizer or DDP wrapper built before the
    init still holds the parameters the model uses.

    Args:
        module: a model (or any module) containing the stacks' owners.
    """
    entries = []
    for owner in list(module.modules()):
        for name, child in list(owner.named_children()):
            if isinstance(child, LorsStack):
                # merging swaps the projections inside the attentions too
                saved = [{
                    path: layer.get_submodule(path)
                    for path in (*child.plans, *child.attentions,
                                 *child.adaptive_plans)
                } for layer in child.layers]
                entries.append((owner, name, child, saved))
    merge_lors(module, [stack for _, _, stack, _ in entries])
    try:
        yield
    finally:
        for owner, name, stack, saved in entries:
            new = apply_lors(owner, list(stack.layers), stack.config, name)
            delattr(owner, name)
            with torch.no_grad():
                stack.load_state_dict(new.state_dict())
                for layer, originals in zip(stack.layers, saved):
                    for path in stack.plans:
                        parent, _, child = path.rpartition('.')
                        if parent in stack.attentions:
                            setattr(originals[parent], child,
                                    originals[path])
                    for path in stack.replaced_paths:
                        originals[path].load_state_dict(
                            layer.get_submodule(path).state_dict())
                        _replace(layer, path, originals[path])
            owner.add_module(name, stack)
