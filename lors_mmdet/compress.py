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

from lors_mmdet.engine import check_outputs
from lors_mmdet.engine.atomic_checkpoint import AtomicLocalBackend
from lors_mmdet.engine.config_source import assignment, comment, one_line
from lors_mmdet.engine.lors_settings import (GENERATED_HEADER, META_KEY,
                                             differences, plain)
from lors_mmdet.lors import (RankChoice, apply_lors,
                             choose_stack_ranks, count_parameters)
from lors_mmdet.lors.stack_config import matches

PARTS = ('encoder', 'decoder')
RankSpec = Union[int, str]
# An output name is a file stem: letters, digits, '_', '+', '-', '.'; no
# leading '.' or '-' (a hidden file, a command-line option); no spaces,
# quotes, braces, slashes or line breaks.
NAME_PATTERN = re.compile(r'[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,127}')


# --------------------------------------------------------------------------
# Models
# --------------------------------------------------------------------------
def load_config(config: str) -> Config:
    """A config file, or ``package::path`` (e.g. ``mmdet::dino/...``)."""
    if '::' in config:
        from mmengine.hub import get_config
        return get_config(config)
    if not osp.isfile(config):
        raise FileNotFoundError(f'config file {config} does not exist')
    return Config.fromfile(config)


def build_model(model_cfg: Mapping, scope: str = 'mmdet') -> nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope(scope)
    return MODELS.build(copy.deepcopy(model_cfg))


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


def read_state_dict(checkpoint: str) -> Tuple[Dict[str, torch.Tensor], dict]:
    """State dict and meta of a checkpoint (path or URL), loaded safely."""
    import lors_mmdet.compat  # noqa: F401  (routes every scheme safely)
    from mmengine.runner import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    if not isinstance(loaded, Mapping):
        raise ValueError(f'{checkpoint} holds a {type(loaded).__name__}, '
                         'not a checkpoint dict')
    state_dict = loaded.get('state_dict', loaded)
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    meta = loaded.get('meta') if isinstance(loaded.get('meta'), Mapping) \
        else {}
    return dict(state_dict), dict(meta)


def load_strictly(model: nn.Module, state_dict: Mapping, what: str) -> None:
    """``load_state_dict(strict=True)`` with an error that names the keys."""
    missing, unexpected = model.load_state_dict(state_dict, strict=False)
    own = model.state_dict()
    shapes = [f'{k}: {tuple(v.shape)} vs model {tuple(own[k].shape)}'
              for k, v in state_dict.items()
              if k in own and hasattr(v, 'shape') and v.shape != own[k].shape]
    if missing or unexpected or shapes:
        raise ValueError(
            f'{what} does not fit the model built from the config: missing '
            f'{missing[:6]}, unexpected {unexpected[:6]}, shapes '
            f'{shapes[:6]} ({len(missing)} / {len(unexpected)} / '
            f'{len(shapes)} in all)')


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
                   ranks: Optional[Mapping] = None
                   ) -> Tuple[dict, Dict[str, Dict[str, RankChoice]]]:
    """Turn the ``parts`` stacks of a trained stock model into LORS stacks
    initialised from its weights, in place (see :func:`choose_ranks`).

    Returns:
        ``(lors dict of the LORS variant's config, choices)``.
    """
    choices = choose_ranks(model, parts, rank, energy, ranks)
    lors = {part: lors_stack_dict(choices[part]) for part in parts}
    for part in parts:
        apply_lors(getattr(model, part), 'layers',
                   dict(lors[part], init='dense'), key=f'lors.{part}')
    return lors, choices


def lors_stack_dict(choices: Mapping[str, RankChoice]) -> dict:
    """The ``lors`` dict of one stack: the most common rank as ``rank``
    (ties: the larger), exact paths of the others in ``ranks``."""
    counts = collections.Counter(c.rank for c in choices.values())
    common = max(counts, key=lambda r: (counts[r], r))
    others = {path: c.rank for path, c in choices.items() if c.rank != common}
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
    """
    config: str
    checkpoint: str
    lors_type: str
    lors: dict
    choices: Dict[str, Dict[str, RankChoice]]
    params_before: Dict[str, int]
    params_after: Dict[str, int]
    schedule: dict = field(default_factory=dict)


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
             command: str = '') -> Compression:
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
    """
    from lors_mmdet.models.distill import parse_distill_cfg
    parts = list(dict.fromkeys(parts))
    if not parts or any(p not in PARTS for p in parts):
        raise ValueError(f'stacks must be some of {PARTS}, got {parts}')
    name = name or default_name(config)
    ckpt_path, cfg_path = output_paths(
        out_dir, name, force, inputs=dict(config=config, checkpoint=checkpoint))
    cfg = load_config(config)
    lors_type = lors_type_for(cfg.model.get('type'))
    schedule, header = finetune_schedule(cfg, fraction, lr_factor)
    if distill is not None:
        distill = dict(distill, teacher_config=_teacher_path(config),
                       teacher_checkpoint=_teacher_path(checkpoint))
        parse_distill_cfg(distill, 'distill (--distill)')

    stock = build_model(cfg.model, cfg.get('default_scope', 'mmdet')).eval()
    state_dict, stock_meta = read_state_dict(checkpoint)
    load_strictly(stock, state_dict, f'checkpoint {checkpoint}')
    params_before = parameter_counts(stock)
    lors, choices = compress_model(stock, parts, rank, energy, ranks)
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
        written = Config.fromfile(temp_cfg)
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
                       params_before, params_after, schedule)


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
