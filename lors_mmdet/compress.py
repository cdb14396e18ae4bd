"""Compress a trained DETR-family detector into a LORS one, ready to fine-tune.

The stock model is built from its config and loaded from its checkpoint (a
file or a URL, through the safe loader: nothing in it runs). Then
:func:`~lors_mmdet.lors.apply_lors` turns the chosen stacks (decoder,
encoder) into LORS stacks initialised from the trained weights (shared = mean
of the layers, private = truncated SVD of each layer's residual), at one rank
per projection kind: given, or the smallest that keeps a target fraction of
every layer's residual energy (:mod:`lors_mmdet.lors.rank_selection`). Out
come, side by side:

- ``<name>.pth``: the LORS checkpoint; ``meta['lors_settings']`` records the
  model type and ``lors`` dict it needs (:mod:`lors_mmdet.engine.lors_settings`);
- ``<name>.py``: a config inheriting the stock one with the registered LORS
  variant (``model.type='Lors<Type>'``, ``model.lors``), ``load_from`` the new
  checkpoint and a short fine-tune schedule (:func:`finetune_schedule`);
  optionally a distillation from the stock model (:mod:`lors_mmdet.models.distill`).

Both files are checked (the config loads, builds the LORS model, and that
model loads the checkpoint strictly) before they are moved into place; an
existing file is only replaced with ``force=True``.

Works for every detector whose LORS variant takes ``lors=dict(encoder=...,
decoder=...)`` (:class:`~lors_mmdet.models.detr.LorsDetrStacksMixin`).
"""
import collections
import contextlib
import copy
import io
import math
import os
import os.path as osp
import re
import secrets
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple, Union

import torch
from mmengine.config import Config
from torch import nn

from lors_mmdet.apis.steps import (build_model, load_config, load_strictly,
                                   read_checkpoint)
from lors_mmdet.engine import check_outputs
from lors_mmdet.engine.atomic_checkpoint import AtomicLocalBackend
from lors_mmdet.engine.config_source import assignment, comment, one_line
from lors_mmdet.engine.lors_settings import (GENERATED_HEADER, META_KEY,
                                             differences, plain)
from lors_mmdet.lors import (InputSecondMoment, RankChoice, apply_lors,
                             calibrated_factors, choose_stack_ranks,
                             count_parameters, dense_weight, find_lors_stacks)
from lors_mmdet.lors.calibrated import whitened_residual_spectrum
from lors_mmdet.lors.stack_config import matches

PARTS = ('encoder', 'decoder')
# {part: {projection path: [E[x x^T] of each layer's inputs]}}
Statistics = Dict[str, Dict[str, List[torch.Tensor]]]
RankSpec = Union[int, str]
# An output name is a file stem: letters, digits, '_', '+', '-', '.'; no
# leading '.' or '-' (a hidden file, a command-line option); no spaces,
# quotes, braces, slashes or line breaks.
NAME_PATTERN = re.compile(r'[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,127}')


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
def lors_type_for(stock_type: str) -> str:
    """The registered LORS variant of a stock detector type.

    Raises:
        ValueError: there is none, or it does not take
            ``lors=dict(encoder=..., decoder=...)`` (yet).
    """
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope

    from lors_mmdet.models.detr.stacks import LorsDetrStacksMixin
    init_default_scope('mmdet')
    if not isinstance(stock_type, str) or stock_type.startswith('Lors'):
        raise ValueError(f'model.type must be a stock mmdet detector (the '
                         f'config to compress), got {stock_type!r}')
    lors_type = 'Lors' + stock_type
    cls = MODELS.get(lors_type)
    if cls is None or not issubclass(cls, LorsDetrStacksMixin):
        raise ValueError(
            f'no LORS variant of {stock_type} takes lors=dict(encoder=..., '
            f'decoder=...): {lors_type} is '
            f'{"not registered" if cls is None else "of the older kind"}; '
            f'supported: {sorted(supported_types())}')
    return lors_type


def supported_types() -> List[str]:
    """Stock types whose ``Lors<Type>`` takes ``lors=dict(...)``."""
    from mmdet.registry import MODELS

    from lors_mmdet.models.detr.stacks import LorsDetrStacksMixin
    return [name[4:] for name, cls in MODELS.module_dict.items()
            if name.startswith('Lors') and isinstance(cls, type)
            and issubclass(cls, LorsDetrStacksMixin)]


def parameter_counts(model: nn.Module) -> Dict[str, int]:
    """Parameters of the encoder, decoder, transformer (= encoder +
    decoder) and whole model, each tensor once."""
    counts = {part: count_parameters(getattr(model, part)).total
              for part in PARTS if isinstance(getattr(model, part, None),
                                              nn.Module)}
    counts['transformer'] = sum(counts.values())
    counts['total'] = count_parameters(model).total
    return counts


# --------------------------------------------------------------------------
# Ranks
# --------------------------------------------------------------------------
def parse_rank_overrides(items: Sequence[str]) -> Dict[Optional[str],
                                                        Dict[str, int]]:
    """``['[PART:]PATTERN=R', ...]`` -> ``{part or None: {pattern: R}}``."""
    found: Dict[Optional[str], Dict[str, int]] = {}
    for item in items or ():
        pattern, sep, value = item.rpartition('=')
        part, colon, glob = pattern.partition(':')
        if not colon:
            part, glob = None, pattern
        try:
            rank = int(value)
        except ValueError:
            rank = 0
        if not sep or not glob or rank <= 0 or (part is not None
                                                and part not in PARTS):
            raise ValueError(f'--ranks takes [PART:]PATTERN=RANK (PART in '
                             f'{PARTS}, RANK a positive int), got {item!r}')
        found.setdefault(part, {})[glob] = rank
    return found


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


# --------------------------------------------------------------------------
# Calibration: the inputs each compressed projection receives
# --------------------------------------------------------------------------
def _stack_of(model: nn.Module, part: str):
    """The one LORS stack of ``model.<part>``."""
    stacks = find_lors_stacks(getattr(model, part))
    if len(stacks) != 1:
        raise ValueError(f'model.{part} holds {len(stacks)} LORS stacks, expected 1')
    return stacks[0][1]


def calibration_loader(cfg: Config, seed: int = 0):
    """The config's own train dataloader, in this process (no workers) and seeded:
    the same batches, augmentation included, on every run."""
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader_cfg.pop('prefetch_factor', None)
    return Runner.build_dataloader(loader_cfg, seed=seed)


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
    from lors_mmdet.progress import progress_bar
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
    import heapq
    if not (_is_number(budget) and 0 < budget < 1):
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
            for group, members in enumerate(stack.groups):
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


# --------------------------------------------------------------------------
# Fine-tune schedule
# --------------------------------------------------------------------------
def finetune_schedule(cfg: Config, fraction: float = 0.2,
                      lr_factor: float = 0.1) -> Tuple[dict, List[str]]:
    """The schedule overrides of a short fine-tune, and why.

    ``fraction`` of the original length (epochs or iterations, at least 1)
    at ``lr_factor`` x the original lr, constant: the stock schedule ended
    at its lr x 0.1 (mmdet's DETR recipes step once by 0.1 near the end), and
    the compressed model starts near that converged point, so the fine-tune
    continues at the rate the training finished with; no warm-up (at that
    rate AdamW's first, sign-like steps are small) and no decay.

    Returns:
        ``({config key: value}, header lines)``.
    """
    if not (_is_number(fraction) and 0 < fraction <= 1):
        raise ValueError(f'the fine-tune fraction (--finetune-fraction) must '
                         f'be in (0, 1], got {fraction!r}')
    if not (_is_number(lr_factor) and math.isfinite(lr_factor)
            and lr_factor > 0):
        raise ValueError(f'the fine-tune lr factor (--lr-factor) must be a '
                         f'finite number > 0, got {lr_factor!r}')
    train_cfg = cfg.get('train_cfg') or {}
    overrides: dict = {}
    if 'max_epochs' in train_cfg:
        unit, length = 'epochs', int(train_cfg['max_epochs'])
        new = max(1, round(fraction * length))
        overrides['train_cfg'] = dict(
            max_epochs=new,
            val_interval=min(int(train_cfg.get('val_interval', 1)), new))
        checkpoint = (cfg.get('default_hooks') or {}).get('checkpoint') or {}
        if checkpoint.get('interval', 1) > new:
            overrides['default_hooks'] = dict(checkpoint=dict(interval=new))
    elif 'max_iters' in train_cfg:
        unit, length = 'iterations', int(train_cfg['max_iters'])
        new = max(1, round(fraction * length))
        overrides['train_cfg'] = dict(max_iters=new, val_interval=new)
        overrides['default_hooks'] = dict(checkpoint=dict(interval=new))
    else:
        raise ValueError('train_cfg has neither max_epochs nor max_iters: '
                         'cannot derive a fine-tune length')
    optimizer = (cfg.get('optim_wrapper') or {}).get('optimizer') or {}
    if 'lr' not in optimizer:
        raise ValueError('optim_wrapper.optimizer.lr is not set: cannot '
                         'derive the fine-tune lr')
    lr = float(optimizer['lr']) * lr_factor
    overrides['optim_wrapper'] = dict(optimizer=dict(lr=lr))
    overrides['param_scheduler'] = []
    header = [
        f'Fine-tune: {new} {unit} (~{fraction:.0%} of the original {length})'
        f' at lr {lr:g} (x{lr_factor:g} the original {optimizer["lr"]:g}),',
        'constant: the stock schedule ended at lr x0.1 after its step decay,',
        'and the compressed model starts near that converged point, so it',
        'continues at that final rate; no warm-up (AdamW steps at this rate',
        'are small) and no further decay. Batch size, augmentation,',
        'gradient clipping and paramwise lr multipliers are inherited.',
    ]
    return overrides, header


def _is_number(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


# --------------------------------------------------------------------------
# The whole command
# --------------------------------------------------------------------------
@dataclass
class Compression:
    """What :func:`compress` did.

    Attributes:
        config: the written config; checkpoint: the written checkpoint.
        lors_type: the LORS model type; lors: the ``lors`` dict.
        choices: ``{part: {path: RankChoice}}``.
        params_before / params_after: :func:`parameter_counts`.
        schedule: the fine-tune overrides in the config.
        output_errors: with calibration, ``{part: {path: [relative output error
            |(W_i - W'_i) C_i^{1/2}| / |W_i C_i^{1/2}| per layer]}}``.
    """
    config: str
    checkpoint: str
    lors_type: str
    lors: dict
    choices: Dict[str, Dict[str, RankChoice]]
    params_before: Dict[str, int]
    params_after: Dict[str, int]
    schedule: dict = field(default_factory=dict)
    output_errors: Optional[Dict[str, Dict[str, List[float]]]] = None


def _write_atomically(data: bytes, path: str) -> None:
    AtomicLocalBackend().put(data, path)


def _base_reference(config: str, out_dir: str) -> str:
    if '::' in config:
        return config
    return osp.relpath(osp.abspath(config), osp.abspath(out_dir))


def _custom_imports(cfg: Config) -> dict:
    current = cfg.get('custom_imports') or {}
    imports = list(current.get('imports') or [])
    if 'lors_mmdet' not in imports:
        imports.append('lors_mmdet')
    return dict(imports=imports, allow_failed_imports=False)


def config_text(config: str, out_dir: str, checkpoint: str, lors_type: str,
                lors: dict, schedule: dict, header: List[str], cfg: Config,
                command: str, distill: Optional[dict] = None) -> str:
    """The source of the compressed model's config: every value a literal,
    the free text (paths, the command line) in one-line comments
    (:mod:`lors_mmdet.engine.config_source`)."""
    model = dict(type=lors_type, lors=lors)
    if distill is not None:
        model['distill'] = distill
    lines = [
        GENERATED_HEADER + one_line(
            f'tools/compress.py (the LORS settings of '
            f'{osp.basename(checkpoint)})'),
        comment(command),
        comment(f'{config} compressed to LORS: shared = mean of the layers,'),
        '# private = truncated SVD of each residual; load_from is the',
        '# compressed checkpoint.',
        *map(comment, header),
        assignment('_base_', _base_reference(config, out_dir)),
        '',
        assignment('custom_imports', _custom_imports(cfg)),
        assignment('model', model),
        assignment('load_from', osp.abspath(checkpoint)),
    ]
    lines += [assignment(key, value) for key, value in schedule.items()]
    return '\n'.join(lines) + '\n'


def output_paths(out_dir: str, name: str, force: bool,
                 inputs: Optional[Mapping[str, str]] = None) -> Tuple[str, str]:
    """``(<out_dir>/<name>.pth, <out_dir>/<name>.py)``.

    Args:
        out_dir: The output folder.
        name: The file stem (see :func:`check_name`).
        force: Whether existing files may be replaced.
        inputs: ``{what: path}`` of the files read, which no output may be
            (see :func:`~lors_mmdet.engine.check_outputs`).

    Raises:
        ValueError: ``name`` is no plain file stem, or an output is an input.
        FileExistsError: an output exists and ``force`` is False.
    """
    check_name(name)
    paths = (osp.join(out_dir, name + '.pth'), osp.join(out_dir, name + '.py'))
    check_outputs(inputs or {}, dict(checkpoint=paths[0], config=paths[1]))
    existing = [p for p in paths if osp.exists(p)]
    if existing and not force:
        raise FileExistsError(f'{", ".join(existing)} exist(s); pass --force '
                              'to replace, or choose another --out / --name')
    return paths


def default_name(config: str) -> str:
    stem = osp.splitext(osp.basename(config.split('::')[-1]))[0]
    return f'lors-compressed_{stem}'


def check_name(name: str) -> None:
    """Refuse an output name that is no plain file stem (see ``NAME_PATTERN``).

    Args:
        name: The stem of the written ``.pth`` and ``.py``.

    Raises:
        ValueError: naming the name and what is allowed.
    """
    if not (isinstance(name, str) and NAME_PATTERN.fullmatch(name)):
        raise ValueError(
            f'the output name (--name) {name!r} is not allowed: expected 1 to '
            '128 letters, digits, "_", "+", "-" or "." (neither of the last two '
            'first), e.g. '
            'lors-compressed_dino')


def compress(config: str,
             checkpoint: str,
             out_dir: str,
             name: Optional[str] = None,
             parts: Sequence[str] = ('decoder', ),
             rank: Optional[RankSpec] = None,
             energy: Optional[float] = None,
             ranks: Optional[Mapping] = None,
             fraction: float = 0.2,
             lr_factor: float = 0.1,
             distill: Optional[dict] = None,
             force: bool = False,
             command: str = '',
             calibrate: Optional[int] = None,
             budget: Optional[float] = None,
             refit_shared: int = 0,
             cfg_options: Optional[Mapping] = None) -> Compression:
    """Compress ``checkpoint`` (of ``config``) and write the LORS config and
    checkpoint to ``out_dir``.

    Args:
        config: the stock config (file or ``mmdet::...``).
        checkpoint: its trained checkpoint (path or URL).
        out_dir: output folder (created).
        name: file name stem (default ``lors-compressed_<config stem>``).
        parts: the stacks to compress.
        rank / energy / ranks: see :func:`choose_ranks`.
        fraction / lr_factor: see :func:`finetune_schedule`.
        distill: ``dict(weight=...)`` to distil from the stock model during
            the fine-tune (teacher = ``config`` + ``checkpoint``), or None.
        force: replace existing output files.
        command: the command line, recorded in the config header.
        calibrate: run this many batches of the config's train dataloader through
            the stock model and fit the LORS factors to the inputs each projection
            receives (:func:`input_statistics`, :func:`fit_to_inputs_`); None: the
            weight-space init.
        budget: instead of ranks, a fraction of the stock transformer's parameters
            to keep; per-layer ranks chosen by measured error
            (:func:`budget_choices`, needs ``calibrate``).
        refit_shared: alternations of the shared-weight refit (with ``calibrate``).
        cfg_options: overrides of the stock config for this command only (e.g. the
            calibration data's root), as ``--cfg-options``; not written into the
            output config.
    """
    from lors_mmdet.models.distill import parse_distill_cfg
    parts = list(dict.fromkeys(parts))
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f'stacks must be some of {PARTS}, got {parts}')
    name = name or default_name(config)
    ckpt_path, cfg_path = output_paths(
        out_dir, name, force, inputs=dict(config=config, checkpoint=checkpoint))
    cfg = load_config(config)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    lors_type = lors_type_for(cfg.model.get('type'))
    schedule, header = finetune_schedule(cfg, fraction, lr_factor)
    if distill is not None:
        distill = dict(distill, teacher_config=_teacher_path(config),
                       teacher_checkpoint=_teacher_path(checkpoint))
        parse_distill_cfg(distill, 'distill (--distill)')

    stock = build_model(cfg.model, cfg.get('default_scope', 'mmdet')).eval()
    state_dict, stock_meta = read_checkpoint(checkpoint)
    load_strictly(stock, state_dict, f'checkpoint {checkpoint}')
    params_before = parameter_counts(stock)
    stats = None
    if calibrate is not None:
        if not isinstance(refit_shared, int) or isinstance(refit_shared, bool) \
                or refit_shared < 0:
            raise ValueError(f'--refit-shared must be a non-negative int, got '
                             f'{refit_shared!r}')
        stats = input_statistics(stock, parts, calibration_loader(cfg), calibrate)
    elif budget is not None or refit_shared:
        raise ValueError('--budget and --refit-shared fit the model to measured '
                         'inputs: they need --calibrate N')
    lors, choices, errors = compress_model(stock, parts, rank, energy, ranks, stats,
                                           budget, refit_shared)
    converted = stock.state_dict()
    settings = {'model.type': lors_type, 'model.lors': plain(lors)}

    os.makedirs(out_dir, exist_ok=True)
    text = config_text(config, out_dir, ckpt_path, lors_type, lors, schedule,
                       header, cfg, command, distill)
    # Checked under a temporary name, then both files moved into place.
    temp_cfg = osp.join(out_dir,
                        f'.{name}.{secrets.token_hex(4)}.partial.py')
    try:
        with open(temp_cfg, 'w') as f:
            f.write(text)
        written = load_config(temp_cfg)
        left = differences(written, settings)
        if left:
            raise RuntimeError(f'the written config does not reproduce the '
                               f'LORS settings: {left}')
        lors_model = build_model(written.model,
                                 written.get('default_scope', 'mmdet'))
        load_strictly(lors_model, converted, 'the compressed state dict')
        params_after = parameter_counts(lors_model)
        buffer = io.BytesIO()
        meta = {
            META_KEY: settings,
            'compressed_from': dict(config=config, checkpoint=checkpoint),
        }
        with contextlib.suppress(KeyError, TypeError):  # plain data only
            meta['dataset_meta'] = plain(stock_meta['dataset_meta'])
        torch.save(dict(meta=meta, state_dict=converted), buffer)
        _write_atomically(buffer.getvalue(), ckpt_path)
        with open(temp_cfg, 'rb') as f:
            _write_atomically(f.read(), cfg_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_cfg)
    return Compression(cfg_path, ckpt_path, lors_type, lors, choices,
                       params_before, params_after, schedule, errors)


def _teacher_path(path: str) -> str:
    return osp.abspath(path) if osp.exists(path) else path


def format_report(result: Compression) -> str:
    """The printed report: ranks, residual energy kept, parameter counts."""
    lines = ['rank and residual energy kept (|W_i - mean|_F^2), per '
             'projection kind:',
             f'  {"stack":8} {"projection":34} {"rank":>9} {"target":>6} '
             f'{"min kept":>8}  kept per layer']
    for part, choices in result.choices.items():
        for path, choice in choices.items():
            target = '-' if choice.target is None else f'{choice.target:.2f}'
            kept = ' '.join(f'{k:.3f}' for k in choice.kept_energy)
            lines.append(f'  {part:8} {path:34} '
                         f'{choice.rank:>4}/{choice.max_rank:<4} {target:>6} '
                         f'{choice.min_kept_energy:8.3f}  {kept}')
    if result.output_errors:
        lines.append('relative output error on the calibration inputs '
                     '(|(W_i - W\'_i) C_i^1/2| / |W_i C_i^1/2|), per layer:')
        for part, paths in result.output_errors.items():
            for path, errors in paths.items():
                ranks = result.choices[part][path].layer_ranks \
                    if result.choices[part][path].per_layer else None
                text = ' '.join(f'{e:.3f}' for e in errors)
                lines.append(f'  {part:8} {path:34} {text}'
                             + (f'  (ranks {" ".join(map(str, ranks))})' if ranks
                                else ''))
    lines.append('parameters (each tensor once):')
    lines.append(f'  {"":12} {"before":>12} {"after":>12} {"after/before":>12}')
    for key, before in result.params_before.items():
        after = result.params_after[key]
        ratio = after / before if before else float('nan')
        lines.append(f'  {key:12} {before:12,d} {after:12,d} {ratio:12.1%}')
    if result.params_after['transformer'] >= result.params_before[
            'transformer']:
        lines.append('note: no saving - at these ranks the residuals cost '
                     'more than the layers they replace (a projection of '
                     'shape out x in in N layers saves only below rank '
                     '(N-1)/N * out*in/(out+in)); lower --energy / --rank')
    lines.append(f'wrote {result.checkpoint}')
    lines.append(f'wrote {result.config}')
    return '\n'.join(lines)
