"""Refuse checkpoints that do not fit the model's LORS stacks.

mmengine loads checkpoints with ``strict=False``: a tensor whose shape differs
from the model's is skipped with a "size mismatch" warning and the run goes on.
That is what mmdet users want for a classification head with another number of
classes, but for a LORS stack (a checkpoint made at another rank, say) it leaves
part of every layer at its random initialisation and scores a broken model.

:class:`CheckpointMismatchError` is raised instead, for the tensors of LORS
modules only: the modules of the types that the method library itself counts
as LORS (:mod:`lors_mmdet.lors.accounting`: shared weights and generators, LORS
layers; and what stack surgery puts into a model: the
:class:`~lors_mmdet.lors.LorsStack` holding a stack's shared weights, the
:class:`~lors_mmdet.lors.LorsAttention` in place of ``nn.MultiheadAttention``),
found in the model, not guessed from key names; and for the LORS tensors of a
checkpoint (``lors_`` names) that a model stock in that place would drop.
Every other tensor keeps mmengine's behaviour.

Two places raise it: the LORS detectors' own state-dict loading
(:func:`check_lors_state_dict`, which every loader goes through: mmdet's
tools, ``init_detector``, ``DetInferencer``, mmengine's ``load_checkpoint``),
and, before that, :class:`LorsCheckpointCheckHook` in tools/train.py and
tools/test.py (:func:`check_lors_checkpoint`), which also sees the
checkpoint's recorded LORS settings and the config, says which
``--cfg-options`` fit, and covers stock models too.
"""
from typing import (Iterable, List, Mapping, NamedTuple, Optional, Set,
                    Tuple)

from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import is_model_wrapper
from mmengine.registry import HOOKS
from torch import Tensor, nn

from lors_mmdet.lors import LorsAttention, LorsStack, is_lors_key
from lors_mmdet.lors.accounting import LORS_LAYER_TYPES, SHARED_TYPES
from .lors_settings import (META_KEY, cfg_options, differences,
                            format_cfg_options, recorded_settings)

LORS_MODULE_TYPES = SHARED_TYPES + LORS_LAYER_TYPES + (LorsStack,
                                                       LorsAttention)
# The key revision mmengine's Runner.load_checkpoint applies by default.
_WRAPPER_PREFIX = 'module.'
_SHOWN = 10


class CheckpointMismatchError(ValueError):
    """A checkpoint's LORS tensors do not fit the model."""


def lors_module_names(model: nn.Module) -> Set[str]:
    """Names (as in ``state_dict`` keys) of the LORS modules of ``model``."""
    return {name for name, module in model.named_modules()
            if isinstance(module, LORS_MODULE_TYPES)}


def lors_owner(key: str, module_names: Set[str]) -> Optional[str]:
    """The LORS module (of ``module_names``) that ``key`` lies in, if any."""
    parts = key.split('.')
    for end in range(len(parts) - 1, 0, -1):
        prefix = '.'.join(parts[:end])
        if prefix in module_names:
            return prefix
    return None


def checkpoint_state_dict(checkpoint: Mapping) -> Mapping[str, Tensor]:
    """The state dict mmengine copies into the model from ``checkpoint``
    (its ``state_dict`` entry, keys without the DDP ``module.`` prefix)."""
    state_dict = checkpoint.get('state_dict', checkpoint)
    return {(key[len(_WRAPPER_PREFIX):] if key.startswith(_WRAPPER_PREFIX)
             else key): value
            for key, value in state_dict.items()}


class LorsMismatches(NamedTuple):
    """What a state dict cannot fill in a model's LORS tensors.

    Attributes:
        shapes: ``[(key, checkpoint shape, model shape)]`` inside the model's
            LORS modules.
        unexpected: checkpoint keys inside a LORS module of the model that
            the model does not have (a dense layer's ``weight``, an adaptive
            branch the model lacks).
        without_stack: LORS tensors of the checkpoint (names with ``lors_``,
            :func:`~lors_mmdet.lors.is_lors_key`) where the model has no
            LORS module at all (a stock model, or a part left stock).
    """
    shapes: List[Tuple[str, tuple, tuple]]
    unexpected: List[str]
    without_stack: List[str]

    def __bool__(self) -> bool:
        return bool(self.shapes or self.unexpected or self.without_stack)


def find_lors_mismatches(model: nn.Module,
                         state_dict: Mapping[str, Tensor]) -> LorsMismatches:
    """Tensors of ``state_dict`` that would leave a LORS tensor of ``model``
    (or of the checkpoint) unloaded.

    Keys the checkpoint lacks are mmengine's missing keys (the model keeps
    its own init), not listed; nor are other tensors of other shapes (a
    classification head with another number of classes).
    """
    modules = lors_module_names(model)
    model_state = model.state_dict()
    found = LorsMismatches([], [], [])
    for key, value in state_dict.items():
        if not hasattr(value, 'shape'):
            continue
        if lors_owner(key, modules) is None:
            if key not in model_state and is_lors_key(key):
                found.without_stack.append(key)
        elif key not in model_state:
            found.unexpected.append(key)
        elif value.shape != model_state[key].shape:
            found.shapes.append((key, tuple(value.shape),
                                 tuple(model_state[key].shape)))
    return found


def _listed(lines: Iterable[str], count: int) -> List[str]:
    lines = list(lines)[:_SHOWN]
    if count > len(lines):
        lines.append(f'  ... and {count - len(lines)} more')
    return lines


def _mismatch_lines(found: LorsMismatches) -> List[str]:
    lines = []
    if found.shapes:
        lines.append(f'{len(found.shapes)} tensor(s) differ in shape '
                     '(checkpoint vs model):')
        lines += _listed((f'  {key}: checkpoint {tuple(ckpt)}, model '
                          f'{tuple(own)}' for key, ckpt, own in found.shapes),
                         len(found.shapes))
    if found.unexpected:
        lines.append(f'{len(found.unexpected)} tensor(s) of the checkpoint '
                     'have no place in these LORS modules (a dense '
                     'checkpoint, other groups of layers, or another '
                     'adaptive-branch setting):')
        lines += _listed((f'  {key}' for key in found.unexpected),
                         len(found.unexpected))
    if found.without_stack:
        lines.append(f'{len(found.without_stack)} LORS tensor(s) of the '
                     'checkpoint belong to LORS stacks the model does not '
                     'have (it is stock there):')
        lines += _listed((f'  {key}' for key in found.without_stack),
                         len(found.without_stack))
    return lines


_TO_LORS = ('A stock checkpoint must first be converted: '
            'tools/convert_checkpoint.py to-lors CONFIG IN OUT.')
_TO_STOCK = (
    'It is a LORS checkpoint: load it with the LORS config it was made with, '
    'or merge it into a stock checkpoint for a stock config first: '
    'tools/convert_checkpoint.py to-stock LORS_CONFIG IN OUT '
    '[--out-config STOCK_CONFIG.py].')


def _settings_fix(checkpoint: Mapping, cfg: Optional[Config]) -> List[str]:
    """How to load a checkpoint whose LORS settings (recorded in its meta,
    if at all) are not the config's."""
    settings = recorded_settings(checkpoint)
    if not settings:
        return [f'The checkpoint records no LORS settings (meta.{META_KEY}): '
                'load it with the config it was trained or converted with. '
                + _TO_LORS]
    lines = [f'The checkpoint was made with these LORS settings '
             f'(meta.{META_KEY}):']
    lines += [f'  {key} = {value!r}' for key, value in settings.items()]
    found = differences(cfg, settings) if cfg is not None else {}
    options = cfg_options(cfg, settings) if found else None
    if options:
        lines.append('Load it with the same config plus: '
                     f'{format_cfg_options(options)}')
    elif found:
        lines.append('Load it with a config that sets them (the converter '
                     'writes one beside the checkpoint).')
    elif cfg is not None:
        lines.append('The config has the same LORS settings: the shapes '
                     'differ for another reason (layer sizes, number of '
                     'layers).')
    return lines


def check_lors_checkpoint(model: nn.Module, checkpoint: Mapping,
                          cfg: Optional[Config] = None,
                          source: Optional[str] = None) -> None:
    """Raise if ``checkpoint`` does not fit the LORS modules of ``model``, or
    holds LORS stacks that ``model`` does not have.

    Args:
        model: the model about to be loaded (unwrapped).
        checkpoint: the loaded checkpoint (``state_dict`` and ``meta``).
        cfg: the config the model was built from; with it, the message says
            which ``--cfg-options`` load the checkpoint, when the checkpoint
            records its LORS settings.
        source: the checkpoint's file name, for the message.

    Raises:
        CheckpointMismatchError: naming every mismatching key (the first
            ten) with both shapes, the recorded LORS settings and the fix.
    """
    found = find_lors_mismatches(model, checkpoint_state_dict(checkpoint))
    if not found:
        return
    where = f'checkpoint {source}' if source else 'the checkpoint'
    lines = [f'{where} does not fit the LORS modules of the model built from '
             'the config', *_mismatch_lines(found)]
    if found.shapes or found.unexpected:
        lines += _settings_fix(checkpoint, cfg)
    if found.without_stack:
        lines.append(_TO_STOCK)
    raise CheckpointMismatchError('\n'.join(lines))


def check_lors_state_dict(model: nn.Module, state_dict: Mapping[str, Tensor],
                          prefix: str = '') -> None:
    """Raise if a state dict being copied into ``model`` does not fit its
    LORS modules, or holds LORS stacks that ``model`` does not have.

    The check of the model's own loading (every loader, mmdet's tools and
    APIs included, copies through it), where neither the checkpoint's meta
    nor the config is known: :func:`check_lors_checkpoint` says more.

    Args:
        model: the module being loaded.
        state_dict: what is copied (``model``'s tensors under ``prefix``).
        prefix: the key prefix of ``model``'s tensors in ``state_dict``.

    Raises:
        CheckpointMismatchError: naming every mismatching key (the first
            ten) with both shapes and the fix.
    """
    own = {key[len(prefix):]: value for key, value in state_dict.items()
           if key.startswith(prefix)}
    found = find_lors_mismatches(model, own)
    if not found:
        return
    lines = [f'the state dict loaded into {type(model).__name__} does not '
             'fit its LORS modules', *_mismatch_lines(found)]
    if found.shapes:
        lines.append(
            'The checkpoint was made with other LORS settings (e.g. '
            'tools/convert_checkpoint.py to-lors --rank R). Load it '
            'with the config it was made with: the converter writes one '
            'beside the checkpoint (OUT.py for OUT.pth) and prints the '
            '--cfg-options that select it (model.lors.<part>.rank=R); '
            'tools/test.py CONFIG CHECKPOINT names the recorded settings.')
    if found.unexpected:
        lines.append(_TO_LORS)
    if found.without_stack:
        lines.append(_TO_STOCK)
    raise CheckpointMismatchError('\n'.join(lines))


@HOOKS.register_module()
class LorsCheckpointCheckHook(Hook):
    """Make a checkpoint that does not fit the model's LORS stacks an error.

    mmengine calls ``after_load_checkpoint`` after reading a checkpoint and
    before copying it into the model (``Runner.load_checkpoint``, used by
    ``load_from`` and ``resume``). The lowest priority lets other hooks
    (EMAHook swapping in its weights) go first: what is checked is what is
    copied. tools/train.py and tools/test.py add it
    (:func:`add_lors_checkpoint_check`).
    """

    priority = 'LOWEST'

    def after_load_checkpoint(self, runner, checkpoint: dict) -> None:
        model = runner.model.module if is_model_wrapper(runner.model) \
            else runner.model
        check_lors_checkpoint(model, checkpoint, runner.cfg,
                              runner.cfg.get('load_from'))


def add_lors_checkpoint_check(cfg: Config) -> None:
    """Add :class:`LorsCheckpointCheckHook` to ``cfg.custom_hooks`` (once)."""
    hooks = list(cfg.get('custom_hooks') or [])
    if not any(hook.get('type') in ('LorsCheckpointCheckHook',
                                    LorsCheckpointCheckHook)
               for hook in hooks):
        hooks.append(dict(type='LorsCheckpointCheckHook'))
    cfg.custom_hooks = hooks
