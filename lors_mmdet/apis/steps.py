"""The steps every workflow composes: files become models and back.

One implementation of each: load a config (a file or ``<package>::<path>``;
:mod:`lors_mmdet.engine.config_files`, re-exported here), build a model without downloads, read a checkpoint safely, load it strictly
with the offending keys named, save a checkpoint atomically. Everything above
``models/`` that reads or writes these files goes through here.
"""
import copy
from typing import Any, Dict, Mapping, Optional, Tuple

from mmengine.config import Config
from torch import Tensor, nn

from lors_mmdet.checkpoint_loading import load_any_checkpoint
from lors_mmdet.engine import save_checkpoint_file
# Re-exported: the one config loader lives in engine/, whose launch checks use it too.
from lors_mmdet.engine.config_files import (load_config,  # noqa: F401
                                            resolve_config_path)
from lors_mmdet.engine.load_checks import CheckpointMismatchError

StateDict = Dict[str, Tensor]
_WRAPPER_PREFIX = 'module.'


def _without_pretrained(model_cfg: Mapping) -> None:
    backbone = model_cfg.get('backbone')
    if backbone is not None:
        backbone['init_cfg'] = None
        if 'pretrained' in backbone:
            backbone['pretrained'] = None


def strip_pretrained(cfg: Config) -> Config:
    """Remove the backbone's pretrained-weight init (it would download) from
    ``cfg.model``, in place.

    Args:
        cfg: A loaded config.
    """
    _without_pretrained(cfg.model)
    return cfg


def build_model(model_cfg: Mapping, scope: str = 'mmdet', init_weights: bool = False,
                device: Optional[str] = None) -> nn.Module:
    """The model of ``model_cfg`` (a copy), built through the registry of ``scope``
    without its pretrained-weight init.

    Args:
        model_cfg: A config's ``model``; not changed.
        scope: The registry scope (a config's ``default_scope``).
        init_weights: Run the model's ``init_weights`` (as training would).
        device: Where the model goes (left where it is built if None).
    """
    from mmdet.registry import MODELS
    from mmdet.utils import register_all_modules
    from mmengine.registry import init_default_scope
    register_all_modules(init_default_scope=False)
    init_default_scope(scope)
    model_cfg = copy.deepcopy(model_cfg)
    _without_pretrained(model_cfg)
    model = MODELS.build(model_cfg)
    if init_weights:
        model.init_weights()
    return model if device is None else model.to(device)


def read_checkpoint(checkpoint: str) -> Tuple[StateDict, Dict[str, Any]]:
    """The state dict and meta of a checkpoint, loaded safely (nothing in the
    file runs; see :mod:`lors_mmdet.checkpoint_loading`).

    A checkpoint saved from a wrapped model (every key ``module.*``) is read
    with the prefix removed; a file holding a bare state dict has empty meta.

    Args:
        checkpoint: A path, a URL or any mmengine checkpoint scheme.

    Raises:
        ValueError: The file holds no checkpoint dict.
    """
    loaded = load_any_checkpoint(checkpoint, map_location='cpu')
    if not isinstance(loaded, Mapping):
        raise ValueError(f'{checkpoint} holds a {type(loaded).__name__}, '
                         'not a checkpoint dict')
    state_dict = loaded.get('state_dict', loaded)
    if state_dict and all(k.startswith(_WRAPPER_PREFIX) for k in state_dict):
        state_dict = {k[len(_WRAPPER_PREFIX):]: v for k, v in state_dict.items()}
    meta = loaded.get('meta') if isinstance(loaded.get('meta'), Mapping) else {}
    return dict(state_dict), dict(meta)


def _first(keys, count: int = 8) -> str:
    return f'{keys[:count]}{"..." if len(keys) > count else ""}'


def load_strictly(model: nn.Module, state_dict: Mapping[str, Tensor], what: str) -> None:
    """``model.load_state_dict(state_dict, strict=True)`` with an error that
    names what did not fit.

    Args:
        model: The model built from the config.
        state_dict: What to load into it.
        what: The source, for the error (e.g. ``'checkpoint x.pth'``).

    Raises:
        ValueError: Missing or unexpected keys, or other shapes, named.
    """
    try:
        missing, unexpected = model.load_state_dict(state_dict, strict=False)
    except (RuntimeError, CheckpointMismatchError) as error:
        raise ValueError(f'{what} does not fit the model built from the '
                         f'config: {error}') from error
    if missing or unexpected:
        raise ValueError(
            f'{what} does not fit the model built from the config: missing '
            f'keys {_first(missing)}, unexpected keys {_first(unexpected)} '
            f'({len(missing)} / {len(unexpected)} in all; the model is a '
            f'{type(model).__name__})')


def save_checkpoint(state_dict: Mapping[str, Tensor], meta: Mapping[str, Any],
                    path: str) -> None:
    """Write ``{'meta', 'state_dict'}`` to ``path`` atomically: a crash leaves
    the previous file whole.

    Args:
        state_dict: The tensors.
        meta: Plain-typed metadata (the file loads with ``weights_only``).
        path: The local file.
    """
    save_checkpoint_file(dict(meta=dict(meta), state_dict=state_dict), path)
