"""Compress a trained detector into a LORS one, ready to fine-tune.

The workflow (:func:`compress`): the stock model is built from its config and
loaded strictly from its checkpoint (a file or a URL, through the safe loader:
nothing in it runs; :mod:`.steps`). Then
:func:`~lors_mmdet.models.compression.compress_model` turns the chosen
stacks (decoder, encoder) into LORS stacks initialised from the trained weights
(shared = mean of the layers, private = truncated SVD of each layer's
residual), at one rank per projection kind: given, or the smallest that keeps a
target fraction of every layer's residual energy
(:mod:`lors_mmdet.lors.rank_selection`); with ``calibrate``, fitted to the
inputs of the config's own train batches. Out come, side by side:

- ``<name>.pth``: the LORS checkpoint; ``meta['lors_settings']`` records the
  model type and ``lors`` dict it needs (:mod:`lors_mmdet.engine.lors_settings`);
- ``<name>.py``: a config inheriting the stock one with the registered LORS
  variant (``model.type='Lors<Type>'``, ``model.lors``), ``load_from`` the new
  checkpoint and a short fine-tune schedule (:func:`finetune_schedule`);
  optionally a distillation from the stock model (:mod:`lors_mmdet.models.distill`).

Both files are checked (the config loads, builds the LORS model, and that
model loads the checkpoint strictly) before they are moved into place; an
existing file is only replaced with ``force=True``.

Works for every detector a LORS detector class knows
(:func:`~lors_mmdet.models.lors_stacks.lors_class_of`): the DETR family, Sparse
R-CNN, QueryInst, AdaMixer; distillation for the DETR family.
"""
import contextlib
import copy
import math
import os
import os.path as osp
import re
import secrets
from dataclasses import dataclass, field
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from mmengine.config import Config

from lors_mmdet.engine import check_outputs
from lors_mmdet.engine.atomic_checkpoint import AtomicLocalBackend
from lors_mmdet.engine.config_files import base_reference
from lors_mmdet.engine.config_source import assignment, comment, one_line
from lors_mmdet.engine.lors_settings import (GENERATED_HEADER, META_KEY,
                                             differences, plain)
from lors_mmdet.lors import RankChoice
from lors_mmdet.models.compression import (RankSpec, compress_model,
                                          input_statistics, is_number,
                                          parameter_counts, stacks_key)
from lors_mmdet.models.distill import PredictionDistillMixin, parse_distill_cfg
from lors_mmdet.models.lors_stacks import lors_classes
from .steps import (build_model, load_config, load_strictly, read_checkpoint,
                    save_checkpoint)

# An output name is a file stem: letters, digits, '_', '+', '-', '.'; no
# leading '.' or '-' (a hidden file, a command-line option); no spaces,
# quotes, braces, slashes or line breaks.
NAME_PATTERN = re.compile(r'[A-Za-z0-9_+][A-Za-z0-9_.+-]{0,127}')


# --------------------------------------------------------------------------
# The LORS variant of the stock detector
# --------------------------------------------------------------------------
def lors_class_for(model_cfg: Mapping) -> type:
    """The LORS detector class of a stock detector config (``DINO`` ->
    ``LorsDINO``; ``AdaMixer`` is its own).

    Raises:
        ValueError: the config is a LORS one already, or no LORS class knows
            its type.
    """
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    stock_type = model_cfg.get('type')
    if not isinstance(stock_type, str) or stock_type.startswith('Lors') \
            or model_cfg.get('lors'):
        raise ValueError(f'model must be a stock mmdet detector without lors (the '
                         f'config to compress), got type {stock_type!r}'
                         + (' with model.lors' if model_cfg.get('lors') else ''))
    classes = lors_classes()
    if stock_type not in classes:
        raise ValueError(f'no LORS variant of {stock_type} is registered; supported: '
                         f'{sorted(classes)}')
    return classes[stock_type]


# --------------------------------------------------------------------------
# Calibration: the inputs each compressed projection receives
# --------------------------------------------------------------------------
def calibration_loader(cfg: Config, seed: int = 0):
    """The config's own train dataloader, in this process (no workers) and seeded:
    the same batches, augmentation included, on every run."""
    from mmengine.runner import Runner
    loader_cfg = copy.deepcopy(cfg.train_dataloader)
    loader_cfg.update(num_workers=0, persistent_workers=False)
    loader_cfg.pop('prefetch_factor', None)
    return Runner.build_dataloader(loader_cfg, seed=seed)


# --------------------------------------------------------------------------
# Fine-tune schedule
# --------------------------------------------------------------------------
def finetune_schedule(cfg: Config, fraction: float = 0.2,
                      lr_factor: float = 0.1,
                      freeze_shared: float = 0.0) -> Tuple[dict, List[str]]:
    """The schedule overrides of a short fine-tune, and why.

    ``fraction`` of the original length (epochs or iterations, at least 1)
    at ``lr_factor`` x the original lr, constant: the stock schedule ended
    at its lr x 0.1 (mmdet's DETR recipes step once by 0.1 near the end), and
    the compressed model starts near that converged point, so the fine-tune
    continues at the rate the training finished with; no warm-up (at that
    rate AdamW's first, sign-like steps are small) and no decay. With
    ``freeze_shared`` (a fraction in (0, 1)) the shared weights are held fixed for
    that first part of the fine-tune (:class:`~lors_mmdet.engine.FreezeLorsSharedHook`, appended to the
    config's ``custom_hooks``).

    Returns:
        ``({config key: value}, header lines)``.
    """
    if not (is_number(fraction) and 0 < fraction <= 1):
        raise ValueError(f'the fine-tune fraction (--finetune-fraction) must '
                         f'be in (0, 1], got {fraction!r}')
    if not (is_number(lr_factor) and math.isfinite(lr_factor)
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
    frozen_lines = []
    if freeze_shared:
        if not (is_number(freeze_shared) and 0 < freeze_shared < 1):
            raise ValueError(f'the frozen part of the fine-tune (--freeze-shared) '
                             f'must be a fraction in (0, 1), got {freeze_shared!r}')
        hook = dict(type='FreezeLorsSharedHook', fraction=float(freeze_shared))
        overrides['custom_hooks'] = [*plain(list(cfg.get('custom_hooks') or [])),
                                     hook]
        frozen_lines = [f'The shared weights are held fixed for the first '
                        f'{freeze_shared:.0%} of its iterations (the private residuals '
                        'learn first), then train too.']
    header = [
        f'Fine-tune: {new} {unit} (~{fraction:.0%} of the original {length})'
        f' at lr {lr:g} (x{lr_factor:g} the original {optimizer["lr"]:g}),',
        'constant: the stock schedule ended at lr x0.1 after its step decay,',
        'and the compressed model starts near that converged point, so it',
        'continues at that final rate; no warm-up (AdamW steps at this rate',
        'are small) and no further decay. Batch size, augmentation,',
        'gradient clipping and paramwise lr multipliers are inherited.',
        *frozen_lines,
    ]
    return overrides, header


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
        params_before / params_after: see
            :func:`~lors_mmdet.models.compression.parameter_counts`.
        stacks_key: the row of those counts that holds the stacks
            (``'transformer'``, ``'roi_head'``).
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
    stacks_key: str = 'transformer'
    output_errors: Optional[Dict[str, Dict[str, List[float]]]] = None


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
        assignment('_base_', base_reference(config, out_dir)),
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
             cfg_options: Optional[Mapping] = None,
             freeze_shared: float = 0.0) -> Compression:
    """Compress ``checkpoint`` (of ``config``) and write the LORS config and
    checkpoint to ``out_dir``.

    Args:
        config: the stock config (file or ``mmdet::...``).
        checkpoint: its trained checkpoint (path or URL).
        out_dir: output folder (created).
        name: file name stem (default ``lors-compressed_<config stem>``).
        parts: the stacks to compress.
        rank / energy / ranks: see
            :func:`~lors_mmdet.models.compression.choose_ranks`.
        fraction / lr_factor / freeze_shared: see :func:`finetune_schedule`.
        distill: ``dict(weight=...)`` to distil from the stock model during
            the fine-tune (teacher = ``config`` + ``checkpoint``), or None.
        force: replace existing output files.
        command: the command line, recorded in the config header.
        calibrate: run this many batches of the config's train dataloader through
            the stock model and fit the LORS factors to the inputs each projection
            receives (``input_statistics`` and ``fit_to_inputs_`` of
            :mod:`lors_mmdet.models.compression`); None: the weight-space
            init.
        budget: instead of ranks, a fraction of the stock parameters of the
            modules holding the stacks (a DETR's transformer, Sparse R-CNN's RoI
            head) to keep; per-layer ranks chosen by the measured output error
            with ``calibrate``, else by the weight-space error (``budget_choices``
            of the same module).
        refit_shared: alternations of the shared-weight refit (with ``calibrate``).
        cfg_options: overrides of the stock config for this command only (e.g. the
            calibration data's root), as ``--cfg-options``; not written into the
            output config.
    """
    parts = list(dict.fromkeys(parts))
    name = name or default_name(config)
    ckpt_path, cfg_path = output_paths(
        out_dir, name, force, inputs=dict(config=config, checkpoint=checkpoint))
    cfg = load_config(config)
    # the fine-tune written into the config derives from the config as it is,
    # not from this command's --cfg-options
    schedule, header = finetune_schedule(cfg, fraction, lr_factor, freeze_shared)
    if cfg_options:
        cfg.merge_from_dict(dict(cfg_options))
    lors_class = lors_class_for(cfg.model)
    lors_type = lors_class.__name__
    if not parts or any(p not in lors_class.lors_stack_paths for p in parts):
        raise ValueError(f'the stacks to compress (--stacks) of {lors_type} must '
                         f'be some of {list(lors_class.lors_stack_paths)}, got '
                         f'{parts}')
    if distill is not None:
        if not issubclass(lors_class, PredictionDistillMixin):
            raise ValueError(f'distillation (--distill) is available for the DETR '
                             f'family; {lors_type} does not take model.distill')
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
    elif refit_shared:
        raise ValueError('--refit-shared fits the shared weights to measured '
                         'inputs: it needs --calibrate N')
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
        meta = {
            META_KEY: settings,
            'compressed_from': dict(config=config, checkpoint=checkpoint),
        }
        with contextlib.suppress(KeyError, TypeError):  # plain data only
            meta['dataset_meta'] = plain(stock_meta['dataset_meta'])
        save_checkpoint(converted, meta, ckpt_path)
        AtomicLocalBackend().put_text(text, cfg_path)
    finally:
        with contextlib.suppress(FileNotFoundError):
            os.remove(temp_cfg)
    return Compression(cfg_path, ckpt_path, lors_type, lors, choices,
                       params_before, params_after, schedule, stacks_key(stock),
                       errors)


def _teacher_path(path: str) -> str:
    return osp.abspath(path) if osp.exists(path) else path


def format_compression(result: Compression) -> str:
    """The printed report: ranks, residual energy kept, parameter counts."""
    width = max([8, *map(len, result.choices)])  # 'mask_decoder' is 12
    lines = ['rank and residual energy kept (|W_i - mean|_F^2), per '
             'projection kind:',
             f'  {"stack":{width}} {"projection":34} {"rank":>9} {"target":>6} '
             f'{"min kept":>8}  kept per layer']
    for part, choices in result.choices.items():
        for path, choice in choices.items():
            target = '-' if choice.target is None else f'{choice.target:.2f}'
            kept = ' '.join(f'{k:.3f}' for k in choice.kept_energy)
            lines.append(f'  {part:{width}} {path:34} '
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
                lines.append(f'  {part:{width}} {path:34} {text}'
                             + (f'  (ranks {" ".join(map(str, ranks))})' if ranks
                                else ''))
    lines.append('parameters (each tensor once):')
    lines.append(f'  {"":12} {"before":>12} {"after":>12} {"after/before":>12}')
    for key, before in result.params_before.items():
        after = result.params_after[key]
        ratio = after / before if before else float('nan')
        lines.append(f'  {key:12} {before:12,d} {after:12,d} {ratio:12.1%}')
    if result.params_after[result.stacks_key] >= result.params_before[
            result.stacks_key]:
        lines.append('note: no saving - at these ranks the residuals cost '
                     'more than the layers they replace (a projection of '
                     'shape out x in in N layers saves only below rank '
                     '(N-1)/N * out*in/(out+in)); lower --energy / --rank')
    lines.append(f'wrote {result.checkpoint}')
    lines.append(f'wrote {result.config}')
    return '\n'.join(lines)
