"""Compress a trained detector's stacks into LORS, from its own weights.

The model side of :mod:`lors_mmdet.apis.compression` (which reads the config and
checkpoint, runs the calibration data and writes the LORS config and
checkpoint): the ranks of each projection (given, by residual energy, or by a
parameter budget against measured output error), the surgery with
``init='dense'`` (shared = mean of the layers, private = truncated SVD of each
residual), and optionally factors fitted to the inputs each projection
receives (:mod:`lors_mmdet.lors.calibrated`). Functions of a detector that a
LORS detector class knows (:func:`~lors_mmdet.models.lors_stacks.lors_class_of`:
the DETR family's encoder / decoder, Sparse R-CNN's and AdaMixer's RoI-head
stages as ``decoder``, QueryInst's mask stages as ``mask_decoder``); every
projection of a layer is shared (the generators of Sparse R-CNN's dynamic
convolutions included, as ordinary projections); no file I/O.
"""
import collections
import copy
import heapq
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from torch import nn

from lors_mmdet.lors import (InputSecondMoment, RankChoice, apply_lors,
                             calibrated_factors, choose_stack_ranks,
                             count_parameters, dense_weight, find_lors_stacks)
from lors_mmdet.lors.calibrated import whitened_residual_spectrum
from lors_mmdet.lors.stack_config import matches
from lors_mmdet.models.lors_stacks import (lors_class_of, lors_stack_paths_of,
                                           stack_owner_and_layers)
from lors_mmdet.progress import progress_bar

# {part: {projection path: [E[x x^T] of each layer's inputs]}}
Statistics = Dict[str, Dict[str, List[torch.Tensor]]]
RankSpec = Union[int, str]


# the parts a detector's LORS stacks may be (each detector has some of them)
STACK_PARTS = ('decoder', 'encoder', 'mask_decoder')


def stack_location(model: nn.Module, part: str) -> Tuple[nn.Module, str]:
    """The module owning ``part``'s stack and the name of its layers in it
    (DINO's decoder: ``(model.decoder, 'layers')``; Sparse R-CNN's:
    ``(model.roi_head, 'bbox_head')``).

    Raises:
        ValueError: the detector has no such stack.
    """
    paths = lors_stack_paths_of(model)
    if part not in paths:
        raise ValueError(f'{type(model).__name__} has no {part} stack to compress '
                         f'(its stacks: {sorted(paths)})')
    owner, layers = stack_owner_and_layers(model, paths[part])
    if not isinstance(owner.get_submodule(layers), nn.ModuleList):
        raise ValueError(f'{type(model).__name__}.{paths[part]} is no stack of '
                         f'layers (nn.ModuleList)')
    return owner, layers


def stack_selection(model: nn.Module, part: str) -> dict:
    """The ``include`` / ``exclude`` of a compressed stack: every projection of a
    layer, stated only where the LORS class's defaults select fewer (Sparse
    R-CNN's stages: its defaults leave the dynamic convolutions' generators to the
    adaptive branch)."""
    defaults = lors_class_of(model).lors_stack_defaults.get(part, {})
    return {key: value for key, value in dict(include=['*'], exclude=[]).items()
            if key in defaults}


def stacks_key(model: nn.Module) -> str:
    """The name of the modules holding the LORS stacks, as one row of
    :func:`parameter_counts`: ``'transformer'`` for a DETR's encoder + decoder,
    else the owner's path (``'roi_head'``)."""
    owners = _owner_paths(model)
    return 'transformer' if owners == ['encoder', 'decoder'] else ' + '.join(owners)


def _owner_paths(model: nn.Module) -> List[str]:
    owners = (stack_owner_and_layers(model, path)[0]
              for path in lors_stack_paths_of(model).values())
    names = {id(module): name for name, module in model.named_modules()}
    return list(dict.fromkeys(names[id(owner)] for owner in owners))


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Parameters of the modules holding the LORS stacks (DETR: encoder,
    decoder and their sum ``transformer``; Sparse R-CNN: ``roi_head``) and of the
    whole model (``total``), each tensor once."""
    counts = {owner: count_parameters(model.get_submodule(owner)).total
              for owner in _owner_paths(model)}
    counts.setdefault(stacks_key(model), sum(counts.values()))
    counts['total'] = count_parameters(model).total
    return counts


def choose_ranks(model: nn.Module,
                 parts: Sequence[str],
                 rank: Optional[RankSpec] = None,
                 energy: Optional[float] = None,
                 ranks: Optional[Mapping[Optional[str], Mapping[str,
                                                                int]]] = None
                 ) -> Dict[str, Dict[str, RankChoice]]:
    """Per part and projection, the rank and the residual energy it keeps.

    Args:
        model: the stock model (trained weights).
        parts: stacks to compress, of :data:`STACK_PARTS`.
        rank: one rank for all projections (int or ``'full'``); a projection
            narrower than it keeps its full rank (a detector's class and box
            outputs, e.g. 4 x 256), unless no projection is as wide as ``rank``.
        energy: the energy target instead (exactly one of the two).
        ranks: ``{part or None (all parts): {pattern: rank}}`` overrides.
    """
    if (rank is None) == (energy is None):
        raise ValueError('give exactly one of a rank and an energy target')
    ranks = ranks or {}
    unused = {(p, g) for p, patterns in ranks.items() for g in patterns}
    choices = {}
    for part in parts:
        owner, layers = stack_location(model, part)
        selection = stack_selection(model, part)
        paths = _projection_paths(model, part)
        overrides = {}
        for scope in (part, None):  # the part's own patterns first
            for pattern, value in (ranks.get(scope) or {}).items():
                if any(matches(path, pattern) for path in paths):
                    overrides.setdefault(pattern, value)
                    unused.discard((scope, pattern))
        if isinstance(rank, int):
            # a projection narrower than the rank keeps its full rank, unless
            # none is as wide (then the rank is a mistake: the surgery says so)
            first = owner.get_submodule(layers)[0]
            widths = {path: min(dense_weight(first, path).shape) for path in paths}
            if max(widths.values()) >= rank:
                for path, full in widths.items():
                    if full < rank and not any(matches(path, p) for p in overrides):
                        overrides[path] = full
        config = dict(rank=rank if rank is not None else 1, ranks=overrides,
                      **selection)
        choices[part] = choose_stack_ranks(owner, layers, config, energy,
                                           key=f'--rank/--ranks ({part})')
    if unused:
        raise ValueError(f'--ranks pattern(s) match no projection: '
                         f'{sorted(f"{p}:{g}" if p else g for p, g in unused)}')
    return choices


def compress_model(model: nn.Module,
                   parts: Sequence[str],
                   rank: Optional[RankSpec] = None,
                   energy: Optional[float] = None,
                   ranks: Optional[Mapping] = None,
                   stats: Optional[Statistics] = None,
                   budget: Optional[float] = None,
                   iterations: int = 0):
    """Turn the ``parts`` stacks of a trained stock model into LORS stacks
    initialised from its weights, in place.

    Without ``stats``: weight-space init (shared = mean, truncated SVD of each
    residual) at the ranks of :func:`choose_ranks`, or with ``budget`` those of
    :func:`budget_choices` by weight-space error. With ``stats``
    (:func:`input_statistics`): the same ranks (``budget``: by measured output
    error), and factors fitted to the measured inputs (:func:`fit_to_inputs_`,
    ``iterations`` shared-weight refits).

    Returns:
        ``(lors dict of the LORS variant's config, choices, output errors)``; the
        output errors (``{part: {path: [relative error per layer]}}``) only with
        ``stats``, else None.
    """
    if budget is not None:
        if rank is not None or energy is not None or ranks:
            raise ValueError('give a parameter budget (--budget) or ranks (--rank, '
                             '--energy, --ranks), not both')
        choices = budget_choices(model, parts, stats, budget)
    else:
        choices = choose_ranks(model, parts, rank, energy, ranks)
    stock = ({part: _stock_weights(model, part, list(choices[part])) for part in parts}
             if stats is not None else None)
    lors = {part: dict(lors_stack_dict(choices[part]), **stack_selection(model, part))
            for part in parts}
    for part in parts:
        apply_lors(*stack_location(model, part), dict(lors[part], init='dense'),
                   key=f'lors.{part}')
    errors = None
    if stats is not None:
        errors = fit_to_inputs_(model, parts, stock, stats, iterations)
    return lors, choices, errors


def _stack_of(model: nn.Module, part: str):
    """The LORS stack of ``part``."""
    owner, layers = stack_location(model, part)
    stacks = [stack for _, stack in find_lors_stacks(owner)
              if stack.layers_path == layers]
    if len(stacks) != 1:
        raise ValueError(f'{part} has {len(stacks)} LORS stacks, expected 1')
    return stacks[0]


@torch.no_grad()
def input_statistics(model: nn.Module, parts: Sequence[str], batches,
                     num_batches: int, progress: bool = True,
                     device: Optional[str] = None) -> Statistics:
    """Per part, projection and layer, the second moment ``E[x x^T]`` (float64) of
    the inputs the stock model's projections receive on ``num_batches`` batches.

    A copy of the model is turned into LORS at full rank (the stock function, with
    every projection a module of its own, attention's q/k/v/out included); forward
    pre-hooks on its projections stream the statistics. ``model`` is not changed.

    Args:
        model: the stock detector (trained weights).
        parts: the stacks that will be compressed.
        batches: an iterable of data batches (:func:`calibration_loader`).
        num_batches: how many to run (inference mode, as the detector predicts).
        progress: show a progress bar.
        device: where the batches run (default: the first CUDA device if there
            is one, else the CPU); the statistics come back on the CPU.
    """
    if not isinstance(num_batches, int) or isinstance(num_batches, bool) \
            or num_batches < 1:
        raise ValueError(f'the number of calibration batches (--calibrate) must be '
                         f'a positive int, got {num_batches!r}')
    if device is None:
        device = 'cuda' if torch.cuda.is_available() else 'cpu'
    probe = copy.deepcopy(model).to(device).eval()
    moments: Dict[str, Dict[str, List[InputSecondMoment]]] = {}
    handles = []
    for part in parts:
        apply_lors(*stack_location(probe, part),
                   dict(rank='full', init='dense', **stack_selection(probe, part)),
                   key=f'lors.{part}')
        stack = _stack_of(probe, part)
        moments[part] = {}
        for path in stack.plans:
            moments[part][path] = []
            for lors in stack.lors_linears(path):
                moment = InputSecondMoment(lors.in_features)
                handles.append(lors.register_forward_pre_hook(moment.hook))
                moments[part][path].append(moment)
    bar = progress_bar(num_batches, 'calibration', 'batch') if progress else None
    done = 0
    try:
        for batch in batches:
            if done == num_batches:
                break
            data = probe.data_preprocessor(batch, False)
            probe(**data, mode='predict')
            done += 1
            if bar is not None:
                bar.update(1)
    finally:
        for handle in handles:
            handle.remove()
        if bar is not None:
            bar.close()
    if done < num_batches:
        raise ValueError(f'--calibrate {num_batches}: the train dataloader gave only '
                         f'{done} batches')
    unseen = [f'{part} {path} layer {i}' for part, paths in moments.items()
              for path, layer_moments in paths.items()
              for i, moment in enumerate(layer_moments) if moment.count == 0]
    if unseen:
        raise ValueError(
            f'--calibrate: these projections received no inputs while the detector '
            f'predicted: {", ".join(unseen[:6])}{" ..." if len(unseen) > 6 else ""} '
            f'(QueryInst predicts masks with its last mask stage only); compress '
            f'that stack without --calibrate')
    return {part: {path: [m.value for m in layer_moments]
                   for path, layer_moments in paths.items()}
            for part, paths in moments.items()}


def _projection_paths(model: nn.Module, part: str) -> List[str]:
    """The paths of the projections a compressed stack shares."""
    owner, layers = stack_location(model, part)
    return list(choose_stack_ranks(owner, layers,
                                   dict(rank=1, **stack_selection(model, part))))


def _stock_weights(model: nn.Module, part: str,
                   paths: Sequence[str]) -> Dict[str, List[torch.Tensor]]:
    owner, name = stack_location(model, part)
    layers = owner.get_submodule(name)
    return {path: [dense_weight(layer, path).detach().clone() for layer in layers]
            for path in paths}


def budget_choices(model: nn.Module, parts: Sequence[str], stats: Optional[Statistics],
                   budget: float) -> Dict[str, Dict[str, RankChoice]]:
    """Per-layer ranks that keep the modules holding the stacks (a DETR's
    transformer, Sparse R-CNN's RoI head: :func:`stacks_key`) within ``budget`` x
    their stock parameters while removing the most measured output error.

    Every layer's residual starts at rank 1 (the smallest the surgery builds); then,
    greedily, the (projection, layer) whose next rank removes the most relative
    output error per parameter gets it, while the budget allows. The error of a
    layer at rank ``r`` is what the whitened residual's singular values beyond ``r``
    hold, relative to the layer's output energy ``|W_i C_i^{1/2}|_F^2``, with the
    mean of the layers as the shared weight (:mod:`lors_mmdet.lors.calibrated`).
    Without statistics every ``C_i`` is the identity: the weight-space error
    ``|W_i - W'_i|_F^2 / |W_i|_F^2`` (what the weight-space init truncates).

    Args:
        model: the stock detector.
        parts: stacks to compress.
        stats: :func:`input_statistics` of those parts, or None (weight space).
        budget: fraction in (0, 1) of those modules' stock parameters.

    Returns:
        ``{part: {path: RankChoice}}`` with per-layer ``layer_ranks`` (``rank`` their
        maximum), ``kept_energy`` the fraction of each whitened residual's energy
        kept and ``target`` the budget.
    """
    key = stacks_key(model)
    if not (is_number(budget) and 0 < budget < 1):
        raise ValueError(f'the parameter budget (--budget) must be a fraction in '
                         f'(0, 1) of the stock {key}, got {budget!r}')
    total = parameter_counts(model)[key]
    allowed = budget * total
    spent = total
    items = []  # [part, path, layer, out + in, tail energies, output energy]
    paths = {part: list(stats[part]) if stats is not None
             else _projection_paths(model, part) for part in parts}
    for part in parts:
        weights = _stock_weights(model, part, paths[part])
        for path, layer_weights in weights.items():
            out_features, in_features = layer_weights[0].shape
            spent -= (len(layer_weights) - 1) * out_features * in_features
            mean = torch.stack([w.double() for w in layer_weights]).mean(0)
            for i, w in enumerate(layer_weights):
                if stats is not None:
                    spectrum, energy = whitened_residual_spectrum(
                        w, mean, stats[part][path][i])
                else:
                    spectrum = torch.linalg.svdvals(w.double() - mean)**2
                    energy = float(w.double().pow(2).sum())
                items.append([part, path, i, out_features + in_features, spectrum,
                              energy])
    spent += sum(item[3] for item in items)  # rank 1 everywhere
    if spent > allowed:
        raise ValueError(f'--budget {budget}: even rank 1 everywhere keeps '
                         f'{spent / total:.1%} of the stock {key}\'s '
                         f'{total:,d} parameters; the budget must be above that')
    ranks = [1] * len(items)

    def gain(k: int) -> float:
        spectrum, energy = items[k][4], items[k][5]
        r = ranks[k]
        return float(spectrum[r]) / energy if r < len(spectrum) and energy > 0 else 0.0

    heap = [(-gain(k) / items[k][3], k) for k in range(len(items))]
    heapq.heapify(heap)
    while heap:
        neg, k = heapq.heappop(heap)
        if neg == 0 or spent + items[k][3] > allowed:
            if neg == 0:
                break
            continue  # too dear now; a cheaper projection may still fit
        ranks[k] += 1
        spent += items[k][3]
        if ranks[k] < len(items[k][4]):
            heapq.heappush(heap, (-gain(k) / items[k][3], k))
    choices: Dict[str, Dict[str, RankChoice]] = {part: {} for part in parts}
    for part in parts:
        for path in paths[part]:
            chosen = [(k, ranks[k]) for k, item in enumerate(items)
                      if item[0] == part and item[1] == path]
            kept = []
            for k, r in chosen:
                spectrum = items[k][4]
                whole = float(spectrum.sum())
                kept.append(float(spectrum[:r].sum()) / whole if whole > 0 else 1.0)
            layer_ranks = tuple(r for _, r in chosen)
            choices[part][path] = RankChoice(
                max(layer_ranks), len(items[chosen[0][0]][4]), layer_ranks,
                tuple(kept), budget, per_layer=True)
    return choices


@torch.no_grad()
def fit_to_inputs_(model: nn.Module, parts: Sequence[str],
                   stock: Dict[str, Dict[str, List[torch.Tensor]]], stats: Statistics,
                   iterations: int = 0) -> Dict[str, Dict[str, List[float]]]:
    """Overwrite the shared weights and private factors of the LORS stacks of
    ``parts`` with those fitted to the measured inputs (per group of layers,
    :func:`~lors_mmdet.lors.calibrated_factors`), at the ranks the stacks were built
    with.

    Args:
        model: the model after the surgery.
        parts: its LORS stacks.
        stock: ``{part: {path: [stock weight per layer]}}``.
        stats: :func:`input_statistics`.
        iterations: alternations of the shared-weight refit.

    Returns:
        ``{part: {path: [relative output error per layer]}}``.
    """
    errors: Dict[str, Dict[str, List[float]]] = {}
    for part in parts:
        stack = _stack_of(model, part)
        errors[part] = {}
        for path, plan in stack.plans.items():
            layers = stack.lors_linears(path)
            per_layer = [0.0] * len(layers)
            for group, members in enumerate(stack.layer_groups):
                shared, factors, group_errors = calibrated_factors(
                    [stock[part][path][i] for i in members],
                    [stats[part][path][i] for i in members],
                    [plan.ranks[i] * plan.num_terms[i] for i in members], iterations)
                target = stack.shared_linear(group, path).weight
                target.copy_(shared.to(target))
                for i, (b, a), error in zip(members, factors, group_errors):
                    layers[i].lors_B.copy_(b.to(layers[i].lors_B))
                    layers[i].lors_A.copy_(a.to(layers[i].lors_A))
                    per_layer[i] = error
            errors[part][path] = per_layer
    return errors


def lors_stack_dict(choices: Mapping[str, RankChoice]) -> dict:
    """The ``lors`` dict of one stack: the most common rank as ``rank``
    (ties: the larger), exact paths of the others in ``ranks``."""
    def spec(c: RankChoice):  # per-layer ranks where a budget chose them
        return list(c.layer_ranks) if c.per_layer and len(set(c.layer_ranks)) > 1 \
            else c.rank
    counts = collections.Counter(spec(c) for c in choices.values()
                                 if not isinstance(spec(c), list))
    common = max(counts, key=lambda r: (counts[r], r)) if counts else 1
    others = {path: spec(c) for path, c in choices.items() if spec(c) != common}
    return dict(rank=common, ranks=others) if others else dict(rank=common)


def is_number(value: object) -> bool:
    """An int or float, not a bool."""
    return isinstance(value, (int, float)) and not isinstance(value, bool)
