"""Compress a trained DETR-family detector's stacks into LORS, from its own weights.

The model side of :mod:`lors_mmdet.apis.compression` (which reads the config and
checkpoint, runs the calibration data and writes the LORS config and
checkpoint): the ranks of each projection (given, by residual energy, or by a
parameter budget against measured output error), the surgery with
``init='dense'`` (shared = mean of the layers, private = truncated SVD of each
residual), and optionally factors fitted to the inputs each projection
receives (:mod:`lors_mmdet.lors.calibrated`). Functions of an ``nn.Module``
with ``encoder`` / ``decoder`` stacks of ``layers``; no file I/O.
"""
import collections
import copy
import heapq
from typing import Dict, List, Mapping, Optional, Sequence, Union

import torch
from torch import nn

from lors_mmdet.lors import (InputSecondMoment, RankChoice, apply_lors,
                             calibrated_factors, choose_stack_ranks,
                             count_parameters, dense_weight, find_lors_stacks)
from lors_mmdet.lors.calibrated import whitened_residual_spectrum
from lors_mmdet.lors.stack_config import matches
from lors_mmdet.models.lors_stacks import LORS_PARTS as PARTS
from lors_mmdet.progress import progress_bar

# {part: {projection path: [E[x x^T] of each layer's inputs]}}
Statistics = Dict[str, Dict[str, List[torch.Tensor]]]
RankSpec = Union[int, str]


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Parameters of the encoder, decoder, transformer (= encoder +
    decoder) and whole model, each tensor once."""
    counts = {part: count_parameters(getattr(model, part)).total
              for part in PARTS if isinstance(getattr(model, part, None),
                                              nn.Module)}
    counts['transformer'] = sum(counts.values())
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
        parts: stacks to compress, of ``('encoder', 'decoder')``.
        rank: one rank for all projections (int or ``'full'``).
        energy: the energy target instead (exactly one of the two).
        ranks: ``{part or None (all parts): {pattern: rank}}`` overrides.
    """
    if (rank is None) == (energy is None):
        raise ValueError('give exactly one of a rank and an energy target')
    ranks = ranks or {}
    unused = {(p, g) for p, patterns in ranks.items() for g in patterns}
    choices = {}
    for part in parts:
        owner = getattr(model, part, None)
        if not isinstance(getattr(owner, 'layers', None), nn.ModuleList):
            raise ValueError(f'model.{part} has no stack of layers '
                             f'({type(model).__name__})')
        paths = list(choose_stack_ranks(owner, 'layers', dict(rank=1)))
        overrides = {}
        for scope in (part, None):  # the part's own patterns first
            for pattern, value in (ranks.get(scope) or {}).items():
                if any(matches(path, pattern) for path in paths):
                    overrides.setdefault(pattern, value)
                    unused.discard((scope, pattern))
        config = dict(rank=rank if rank is not None else 1, ranks=overrides)
        choices[part] = choose_stack_ranks(owner, 'layers', config, energy,
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
    residual) at the ranks of :func:`choose_ranks`. With ``stats``
    (:func:`input_statistics`): the same ranks, or with ``budget`` those of
    :func:`budget_choices`, and factors fitted to the measured inputs
    (:func:`fit_to_inputs_`, ``iterations`` shared-weight refits).

    Returns:
        ``(lors dict of the LORS variant's config, choices, output errors)``; the
        output errors (``{part: {path: [relative error per layer]}}``) only with
        ``stats``, else None.
    """
    if budget is not None:
        if stats is None:
            raise ValueError('a parameter budget (--budget) allocates ranks by the '
                             'measured output error: it needs --calibrate N')
        if rank is not None or energy is not None or ranks:
            raise ValueError('give a parameter budget (--budget) or ranks (--rank, '
                             '--energy, --ranks), not both')
        choices = budget_choices(model, parts, stats, budget)
    else:
        choices = choose_ranks(model, parts, rank, energy, ranks)
    stock = ({part: _stock_weights(model, part, list(choices[part])) for part in parts}
             if stats is not None else None)
    lors = {part: lors_stack_dict(choices[part]) for part in parts}
    for part in parts:
        apply_lors(getattr(model, part), 'layers',
                   dict(lors[part], init='dense'), key=f'lors.{part}')
    errors = None
    if stats is not None:
        errors = fit_to_inputs_(model, parts, stock, stats, iterations)
    return lors, choices, errors


def _stack_of(model: nn.Module, part: str):
    """The one LORS stack of ``model.<part>``."""
    stacks = find_lors_stacks(getattr(model, part))
    if len(stacks) != 1:
        raise ValueError(f'model.{part} holds {len(stacks)} LORS stacks, expected 1')
    return stacks[0][1]


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
        apply_lors(getattr(probe, part), 'layers', dict(rank='full', init='dense'),
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
    return {part: {path: [m.value for m in layer_moments]
                   for path, layer_moments in paths.items()}
            for part, paths in moments.items()}


def _stock_weights(model: nn.Module, part: str,
                   paths: Sequence[str]) -> Dict[str, List[torch.Tensor]]:
    layers = getattr(model, part).layers
    return {path: [dense_weight(layer, path).detach().clone() for layer in layers]
            for path in paths}


def budget_choices(model: nn.Module, parts: Sequence[str], stats: Statistics,
                   budget: float) -> Dict[str, Dict[str, RankChoice]]:
    """Per-layer ranks that keep the transformer (encoder + decoder) within ``budget``
    x its stock parameters while removing the most measured output error.

    Every layer's residual starts at rank 1 (the smallest the surgery builds); then,
    greedily, the (projection, layer) whose next rank removes the most relative
    output error per parameter gets it, while the budget allows. The error of a
    layer at rank ``r`` is what the whitened residual's singular values beyond ``r``
    hold, relative to the layer's output energy ``|W_i C_i^{1/2}|_F^2``, with the
    mean of the layers as the shared weight (:mod:`lors_mmdet.lors.calibrated`).

    Args:
        model: the stock detector.
        parts: stacks to compress.
        stats: :func:`input_statistics` of those parts.
        budget: fraction in (0, 1) of the stock transformer's parameters.

    Returns:
        ``{part: {path: RankChoice}}`` with per-layer ``layer_ranks`` (``rank`` their
        maximum), ``kept_energy`` the fraction of each whitened residual's energy
        kept and ``target`` the budget.
    """
    if not (is_number(budget) and 0 < budget < 1):
        raise ValueError(f'the parameter budget (--budget) must be a fraction in '
                         f'(0, 1) of the stock transformer, got {budget!r}')
    total = parameter_counts(model)['transformer']
    allowed = budget * total
    spent = total
    items = []  # [part, path, layer, out + in, tail energies, output energy]
    for part in parts:
        weights = _stock_weights(model, part, list(stats[part]))
        for path, layer_weights in weights.items():
            out_features, in_features = layer_weights[0].shape
            spent -= (len(layer_weights) - 1) * out_features * in_features
            mean = torch.stack([w.double() for w in layer_weights]).mean(0)
            for i, (w, cov) in enumerate(zip(layer_weights, stats[part][path])):
                spectrum, energy = whitened_residual_spectrum(w, mean, cov)
                items.append([part, path, i, out_features + in_features, spectrum,
                              energy])
    spent += sum(item[3] for item in items)  # rank 1 everywhere
    if spent > allowed:
        raise ValueError(f'--budget {budget}: even rank 1 everywhere keeps '
                         f'{spent / total:.1%} of the stock transformer\'s '
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
        for path in stats[part]:
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
