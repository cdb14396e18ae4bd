"""Convert checkpoints between a stock detector and its LORS version.

Any detector with ``model.lors`` (the DETR family, AdaMixer /
LORS-AdaMixer). The conversion is model building, not key juggling:

- ``to-lors``: the stock model (the LORS config without ``lors`` and with
  the stock type) loads the stock checkpoint strictly; each part of
  ``model.lors`` is applied with ``init='dense'`` (shared = the mean of the
  layers, each private residual = the truncated SVD of that layer's
  difference; exact at ``rank='full'``); the result must load strictly into
  the model built from the LORS config.
- ``to-stock`` (also: merge for deployment): the LORS model loads the
  checkpoint strictly, :func:`~lors_mmdet.lors.merge_lors` folds every stack
  back into stock modules (stock keys; LORS-AdaMixer's adaptive residuals
  exactly, folded in float64), and the stock model loads the result
  strictly. Optionally the stock config is written beside it.
"""
import copy
from dataclasses import dataclass, field
from typing import Any, Dict, Optional, Union


from lors_mmdet.engine import AtomicLocalBackend, check_outputs
from lors_mmdet.engine.lors_settings import META_KEY as LORS_SETTINGS_META
from lors_mmdet.engine.lors_settings import plain
from lors_mmdet.lors import merge_lors
from lors_mmdet.models.lors_stacks import (LORS_KEY, LORS_PARTS,
                                           LorsStacksMixin, parse_lors_cfg,
                                           part_parameters, stock_to_lors)
from .steps import (build_model, load_config, load_strictly, read_checkpoint,
                    save_checkpoint)

DIRECTIONS = ('to-lors', 'to-stock')


@dataclass
class Conversion:
    """Result of a conversion.

    Args:
        model_type: the LORS model type of the config (``LorsDINO``,
            ``AdaMixer``...).
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
    """``(LORS model cfg, stock model cfg, LORS class)`` of a LORS config.

    Args:
        cfg: an mmengine Config whose ``model`` is a detector with a ``lors``
            key (:class:`~lors_mmdet.models.lors_stacks.LorsStacksMixin`).
        rank: overrides ``rank`` of every part of ``model.lors``.

    Raises:
        ValueError: ``model.type`` takes no ``lors``, or the config has no
            ``model.lors``.
    """
    from mmdet.registry import MODELS
    lors_cfg = copy.deepcopy(cfg.model)
    model_type = lors_cfg.get('type')
    cls = MODELS.get(model_type) if isinstance(model_type, str) else None
    if not (isinstance(cls, type) and issubclass(cls, LorsStacksMixin)):
        raise ValueError(
            'the config must build a detector with model.lors (model.type '
            f'AdaMixer, LorsDINO, LorsDeformableDETR...), got model.type='
            f'{model_type!r}')
    parts = parse_lors_cfg(lors_cfg.get('lors'), LORS_KEY,
                           tuple(cls.lors_stack_paths))
    if not parts:
        raise ValueError(f'the config has no {LORS_KEY} (a dict with keys '
                         f'{list(cls.lors_stack_paths)}): nothing to convert')
    if rank is not None:
        lors_cfg.lors = {
            part: dict(lors_cfg.lors[part], rank=rank)
            for part in parts
        }
    stock_cfg = copy.deepcopy(lors_cfg)
    stock_cfg.pop('lors')
    stock_cfg.type = cls.stock_type()
    return lors_cfg, stock_cfg, cls


def convert_checkpoint(direction: str, config, checkpoint: str, out: str,
                       rank: Union[None, int, str] = None,
                       out_config: Optional[str] = None) -> Conversion:
    """Convert ``checkpoint`` and save it to ``out``.

    Args:
        direction: ``'to-lors'`` (stock checkpoint -> LORS at the ranks of
            ``config``) or ``'to-stock'`` (LORS checkpoint -> the stock
            model, loadable by its own config, mmdet's for the DETR family).
        config: path (or Config) of the LORS config.
        checkpoint: input checkpoint path.
        out: output checkpoint path.
        rank: to-lors only: overrides ``rank`` of every part of
            ``model.lors`` (int or ``'full'``).
        out_config: to-stock only: also write the stock config (the LORS
            config without ``model.lors``, the stock type; a ``.py``), e.g.
            for ``tools/test.py`` on a merged LORS-AdaMixer.

    Returns:
        The :class:`Conversion` (errors, parameter counts, settings).

    Raises:
        ValueError: a bad request, or ``out`` is an input (nothing written).
    """
    check_outputs(dict(config=config if isinstance(config, str) else config.filename,
                       checkpoint=checkpoint),
                  dict(checkpoint=out, out_config=out_config))
    if direction not in DIRECTIONS:
        raise ValueError(f'direction must be one of {DIRECTIONS}, got '
                         f'{direction!r}')
    if direction == 'to-stock' and rank is not None:
        raise ValueError('rank applies to to-lors only')
    if out_config is not None and (direction != 'to-stock'
                                   or not str(out_config).endswith('.py')):
        raise ValueError(f'out_config ({out_config}) is a .py file written by '
                         'to-stock only')
    cfg = load_config(config)
    lors_cfg, stock_cfg, cls = lors_and_stock_model_cfgs(cfg, rank)
    parts = {p: c for p, c in lors_cfg.lors.items() if c is not None}
    stack_paths = {p: cls.lors_stack_paths[p] for p in parts}
    state_dict, meta = read_checkpoint(checkpoint)
    result = Conversion(lors_cfg.type)
    if direction == 'to-lors':
        model = build_model(stock_cfg)
        load_strictly(model, state_dict,
                    f'{checkpoint} (read as a stock {stock_cfg.type} '
                    'checkpoint)')
        result.params_before = part_parameters(model, stack_paths)
        result.errors = stock_to_lors(model, parts, stack_paths)
        target = build_model(lors_cfg)
        load_strictly(target, model.state_dict(), 'the converted checkpoint')
        result.lors_settings = {LORS_KEY: plain(lors_cfg.lors, LORS_KEY)}
    else:
        model = build_model(lors_cfg)
        load_strictly(model, state_dict,
                    f'{checkpoint} (read as a {lors_cfg.type} checkpoint)')
        result.params_before = part_parameters(model, stack_paths)
        merge_lors(model)
        target = build_model(stock_cfg)
        load_strictly(target, model.state_dict(), 'the merged checkpoint')
    result.params_after = part_parameters(target, stack_paths)
    meta['lors_conversion'] = dict(direction=direction, source=checkpoint,
                                   model_type=target.__class__.__name__)
    # What shapes the LORS stacks, by config key (plain types: the file
    # loads with weights_only); a stock checkpoint has none.
    meta.pop(LORS_SETTINGS_META, None)
    if result.lors_settings:
        meta[LORS_SETTINGS_META] = result.lors_settings
    save_checkpoint(target.state_dict(), meta, out)
    if out_config is not None:
        stock = copy.deepcopy(cfg)
        stock.model = stock_cfg
        AtomicLocalBackend().put_text(stock.pretty_text, out_config)
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
