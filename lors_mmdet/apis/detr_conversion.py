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
from typing import Any, Dict, Union

from torch import nn

from lors_mmdet.engine import check_outputs
from lors_mmdet.engine.lors_settings import META_KEY as LORS_SETTINGS_META
from lors_mmdet.engine.lors_settings import plain
from lors_mmdet.lors import merge_lors
from lors_mmdet.models.detr.convert import LORS_KEY, stock_to_lors
from lors_mmdet.models.detr.stacks import (LORS_PARTS, LorsDetrStacksMixin,
                                           parse_lors_cfg)
from .steps import (build_model, load_config, load_strictly, read_checkpoint,
                    save_checkpoint)

DIRECTIONS = ('to-lors', 'to-stock')


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


def part_parameters(model: nn.Module, parts) -> Dict[str, int]:
    """``{part: parameters}`` of the model's parts (each tensor once)."""
    return {part: sum(p.numel() for p in getattr(model, part).parameters())
            for part in parts}


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
    check_outputs(dict(config=config if isinstance(config, str) else config.filename,
                       checkpoint=checkpoint), dict(checkpoint=out))
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {DIRECTIONS}, got '
                         f'{direction!r}')
    if direction == 'to-stock' and rank is not None:
        raise ValueError('rank applies to to-lors only')
    cfg = load_config(config)
    lors_cfg, stock_cfg = lors_and_stock_model_cfgs(cfg, rank)
    parts = {p: c for p, c in lors_cfg.lors.items() if c is not None}
    state_dict, meta = read_checkpoint(checkpoint)
    result = Conversion(lors_cfg.type)
    if direction == 'to-lors':
        model = build_model(stock_cfg)
        load_strictly(model, state_dict,
                    f'{checkpoint} (read as a stock {stock_cfg.type} '
                    'checkpoint)')
        result.params_before = part_parameters(model, parts)
        result.errors = stock_to_lors(model, parts)
        target = build_model(lors_cfg)
        load_strictly(target, model.state_dict(), 'the converted checkpoint')
        result.lors_settings = {LORS_KEY: plain(lors_cfg.lors, LORS_KEY)}
    else:
        model = build_model(lors_cfg)
        load_strictly(model, state_dict,
                    f'{checkpoint} (read as a {lors_cfg.type} checkpoint)')
        result.params_before = part_parameters(model, parts)
        merge_lors(model)
        target = build_model(stock_cfg)
        load_strictly(target, model.state_dict(), 'the merged checkpoint')
    result.params_after = part_parameters(target, parts)
    meta['lors_conversion'] = dict(direction=direction, source=checkpoint,
                                   model_type=target.__class__.__name__)
    # What shapes the LORS stacks, by config key (plain types: the file
    # loads with weights_only); a stock checkpoint has none.
    meta.pop(LORS_SETTINGS_META, None)
    if result.lors_settings:
        meta[LORS_SETTINGS_META] = result.lors_settings
    save_checkpoint(target.state_dict(), meta, out)
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
