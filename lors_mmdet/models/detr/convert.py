"""Convert DETR-family checkpoints between mmdet's stock model and LORS.

The conversion is model building, not key juggling:

- ``to-lors``: the stock model (the LORS config without ``lors`` and with
  mmdet's type) loads the stock checkpoint strictly; each part of
  ``model.lors`` is applied with ``init='dense'`` (shared = the mean of the
  layers, each private residual = the truncated SVD of that layer's
  difference; exact at ``rank='full'``); the result must load strictly into
  the model built from the LORS config.
- ``to-stock``: the LORS model loads the checkpoint strictly,
  :func:`~lors_mmdet.lors.merge_lors` folds every stack back into stock
  modules (stock keys), and the stock model loads the result strictly.
"""
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, List, Mapping, Optional, Tuple, Union

import torch
from torch import Tensor, nn

from lors_mmdet.engine import check_outputs, save_checkpoint_file
from lors_mmdet.engine.load_checks import CheckpointMismatchError
from lors_mmdet.engine.lors_settings import META_KEY as LORS_SETTINGS_META
from lors_mmdet.engine.lors_settings import plain
from lors_mmdet.lors import apply_lors, merge_lors
from .stacks import LORS_PARTS, LorsDetrStacksMixin, parse_lors_cfg

LORS_KEY = 'model.lors'
DIRECTIONS = ('to-lors', 'to-stock')
StateDict = Dict[str, Tensor]


@dataclass
class Conversion:
    """Result of a conversion.

    Args:
        model_type: the LORS model type of the config (``LorsDINO``...).
        errors: per part (``encoder`` / ``decoder``), the largest relative
            Frobenius error ``||W - W_lors|| / ||W||`` of any weight after
            the stock -> LORS conversion (to-lors only).
        params_before / params_after: ``{part: parameters}`` of the input and
            output model (each tensor once), for the converted parts.
        lors_settings: the LORS settings recorded in the output checkpoint's
            meta (``{config key: value}``; to-lors only).
    """
    model_type: str
    errors: Dict[str, float] = field(default_factory=dict)
    params_before: Dict[str, int] = field(default_factory=dict)
    params_after: Dict[str, int] = field(default_factory=dict)
    lors_settings: Dict[str, Any] = field(default_factory=dict)


def lors_and_stock_model_cfgs(cfg, rank: Union[None, int, str] = None):
    """``(LORS model cfg, stock model cfg)`` of a LORS DETR-family config.

    Args:
        cfg: an mmengine Config whose ``model.type`` is a LORS DETR-family
            detector with a ``lors`` key.
        rank: overrides ``rank`` of every part of ``model.lors``.

    Raises:
        ValueError: ``model.type`` is no LORS DETR-family detector, or the
            config has no ``model.lors``.
    """
    from mmdet.registry import MODELS
    lors_cfg = copy.deepcopy(cfg.model)
    model_type = lors_cfg.get('type')
    cls = MODELS.get(model_type) if isinstance(model_type, str) else None
    if cls is None or not issubclass(cls, LorsDetrStacksMixin):
        raise ValueError(
            'the config must build a LORS DETR-family detector (model.type '
            f'LorsDETR, LorsDINO, LorsDeformableDETR...), got model.type='
            f'{model_type!r}')
    parts = parse_lors_cfg(lors_cfg.get('lors'), LORS_KEY)
    if not parts:
        raise ValueError(f'the config has no {LORS_KEY} (a dict with keys '
                         f'{LORS_PARTS}): nothing to convert')
    if rank is not None:
        lors_cfg.lors = {
            part: dict(lors_cfg.lors[part], rank=rank)
            for part in parts
        }
    stock_cfg = copy.deepcopy(lors_cfg)
    stock_cfg.pop('lors')
    # The stock class is the one the LORS class extends (LorsDINO -> DINO).
    stock_cfg.type = next(base for base in cls.__mro__[1:]
                          if not issubclass(base, LorsDetrStacksMixin)
                          and issubclass(base, nn.Module)).__name__
    return lors_cfg, stock_cfg


def load_strict(model: nn.Module, state_dict: Mapping[str, Tensor],
                what: str) -> None:
    """Load ``state_dict`` strictly; a clear error when it does not fit.

    Raises:
        ValueError: missing or unexpected keys, or other shapes, named.
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except (RuntimeError, CheckpointMismatchError) as error:
        raise ValueError(f'{what} does not fit the model built from the '
                         f'config: {error}') from error
    if missing or unexpected:
        raise ValueError(
            f'{what} does not fit the model built from the config '
            f'({type(model).__name__}): missing keys {missing[:8]}'
            f'{"..." if len(missing) > 8 else ""}, unexpected keys '
            f'{unexpected[:8]}{"..." if len(unexpected) > 8 else ""}')


def part_parameters(model: nn.Module, parts) -> Dict[str, int]:
    """``{part: parameters}`` of the model's parts (each tensor once)."""
    return {part: sum(p.numel() for p in getattr(model, part).parameters())
            for part in parts}


@torch.no_grad()
def stock_to_lors(stock: nn.Module, parts: Mapping[str, Any]
                  ) -> Dict[str, float]:
    """Turn the stacks of a stock detector into LORS, from its weights.

    Args:
        stock: a stock DETR-family detector with trained weights, changed in
            place.
        parts: ``{part: LorsStackConfig dict}`` (``init`` is set to
            ``'dense'``).

    Returns:
        ``{part: largest relative reconstruction error of a weight}``.
    """
    dense = {k: v.clone() for k, v in stock.state_dict().items()}
    for part, config in parts.items():
        config = dict(config or {}, init='dense')
        apply_lors(getattr(stock, part), 'layers', config,
                   key=f'{LORS_KEY}.{part}')
    merged = copy.deepcopy(stock)
    merge_lors(merged)
    errors = {part: 0.0 for part in parts}
    for key, value in merged.state_dict().items():
        part = key.split('.')[0]
        if part in errors and value.dim() > 1:
            error = float((value - dense[key]).norm() /
                          dense[key].norm().clamp_min(1e-12))
            errors[part] = max(errors[part], error)
    return errors


def _read_checkpoint(checkpoint: str) -> Tuple[StateDict, dict]:
    from mmengine.runner import CheckpointLoader
    loaded = CheckpointLoader.load_checkpoint(checkpoint, map_location='cpu')
    state_dict = loaded.get('state_dict', loaded)
    if state_dict and all(k.startswith('module.') for k in state_dict):
        state_dict = {k[len('module.'):]: v for k, v in state_dict.items()}
    return dict(state_dict), dict(loaded.get('meta') or {})


def _build(model_cfg) -> nn.Module:
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    init_default_scope('mmdet')
    model_cfg = copy.deepcopy(model_cfg)
    if model_cfg.get('backbone', {}).get('init_cfg') is not None:
        model_cfg.backbone.init_cfg = None  # weights come from the checkpoint
    return MODELS.build(model_cfg)


def convert_checkpoint(direction: str, config, checkpoint: str, out: str,
                       rank: Union[None, int, str] = None) -> Conversion:
    """Convert ``checkpoint`` and save it to ``out``.

    Args:
        direction: ``'to-lors'`` (stock mmdet checkpoint -> LORS at the ranks
            of ``config``) or ``'to-stock'`` (LORS checkpoint -> mmdet's stock
            model, loadable by mmdet's own config).
        config: path (or Config) of the LORS config.
        checkpoint: input checkpoint path.
        out: output checkpoint path.
        rank: to-lors only: overrides ``rank`` of every part of
            ``model.lors`` (int or ``'full'``).

    Returns:
        The :class:`Conversion` (errors, parameter counts, settings).

    Raises:
        ValueError: a bad request, or ``out`` is an input (nothing written).
    """
    from mmengine.config import Config
    check_outputs(dict(config=config if isinstance(config, str) else config.filename,
                       checkpoint=checkpoint), dict(checkpoint=out))
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {DIRECTIONS}, got '
                         f'{direction!r}')
    if direction == 'to-stock' and rank is not None:
        raise ValueError('rank applies to to-lors only')
    cfg = Config.fromfile(config) if isinstance(config, str) else config
    lors_cfg, stock_cfg = lors_and_stock_model_cfgs(cfg, rank)
    parts = {p: c for p, c in lors_cfg.lors.items() if c is not None}
    state_dict, meta = _read_checkpoint(checkpoint)
    result = Conversion(lors_cfg.type)
    if direction == 'to-lors':
        model = _build(stock_cfg)
        load_strict(model, state_dict,
                    f'{checkpoint} (read as a stock {stock_cfg.type} '
                    'checkpoint)')
        result.params_before = part_parameters(model, parts)
        result.errors = stock_to_lors(model, parts)
        target = _build(lors_cfg)
        load_strict(target, model.state_dict(), 'the converted checkpoint')
        result.lors_settings = {LORS_KEY: plain(lors_cfg.lors, LORS_KEY)}
    else:
        model = _build(lors_cfg)
        load_strict(model, state_dict,
                    f'{checkpoint} (read as a {lors_cfg.type} checkpoint)')
        result.params_before = part_parameters(model, parts)
        merge_lors(model)
        target = _build(stock_cfg)
        load_strict(target, model.state_dict(), 'the merged checkpoint')
    result.params_after = part_parameters(target, parts)
    meta['lors_conversion'] = dict(direction=direction, source=checkpoint,
                                   model_type=target.__class__.__name__)
    # What shapes the LORS stacks, by config key (plain types: the file
    # loads with weights_only); a stock checkpoint has none.
    meta.pop(LORS_SETTINGS_META, None)
    if result.lors_settings:
        meta[LORS_SETTINGS_META] = result.lors_settings
    save_checkpoint_file(dict(meta=meta, state_dict=target.state_dict()), out)
    return result


def format_conversion(result: Conversion) -> str:
    """A printable report: reconstruction errors, parameter counts."""
    lines = []
    for part, error in result.errors.items():
        lines.append(f'{part}: largest relative reconstruction error '
                     f'||W_i - (W_shared + B_i A_i)|| / ||W_i|| = {error:.4g}')
    for part, before in result.params_before.items():
        after = result.params_after[part]
        change = 100.0 * (after - before) / max(before, 1)
        lines.append(f'{result.model_type} {part} parameters: {before:,} -> '
                     f'{after:,} ({change:+.1f}%)')
    return '\n'.join(lines)
