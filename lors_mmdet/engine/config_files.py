"""The one config loader of the package: a file or ``<package>::<path>``.

Everything that reads a config goes through :func:`load_config`, so that an
``mmdet::`` name means the same file everywhere (the workflows in
:mod:`lors_mmdet.apis`, the tools' launch, the matching configs of
:mod:`.lors_settings`, a distillation's teacher).
"""
import copy
import importlib
import importlib.util
import os.path as osp
from typing import Union

from mmengine.config import Config


def resolve_config_path(config: str) -> str:
    """The file of ``config``.

    ``<package>::<path>`` (e.g. ``mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py``)
    names a config installed with an OpenMMLab package, as in a config's
    ``_base_``; it is looked up in the package's ``.mim/configs`` only
    (nothing is installed or downloaded).

    Args:
        config: A config file path or ``<package>::<path>``.

    Raises:
        FileNotFoundError: There is no such file, named with where it was
            looked for.
    """
    if '::' not in config:
        if not osp.isfile(config):
            raise FileNotFoundError(f'config file {config} does not exist')
        return config
    package, _, relative = config.partition('::')
    spec = importlib.util.find_spec(package) if package.isidentifier() else None
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError(f'{config}: {package!r} is no installed package')
    root = list(spec.submodule_search_locations)[0]
    path = osp.join(root, '.mim', 'configs', relative)
    if not osp.isfile(path):
        module = importlib.import_module(package)
        version = getattr(module, '__version__', '')
        raise FileNotFoundError(f'{config}: no such config in {package} {version} '
                                f'(looked for {path})')
    return path


def load_config(config: Union[str, Config]) -> Config:
    """A loaded config: a file, ``<package>::<path>``, or a copy of ``config``.

    Args:
        config: See :func:`resolve_config_path`, or a loaded Config.
    """
    if isinstance(config, str):
        return Config.fromfile(resolve_config_path(config))
    return copy.deepcopy(config)


def base_reference(config: str, folder: str) -> str:
    """How a config written to ``folder`` names ``config`` in its ``_base_``:
    ``<package>::<path>`` as it is, a file relative to ``folder`` (so the two
    can move together).

    Args:
        config: A config file path or ``<package>::<path>``.
        folder: The folder of the config that inherits it.
    """
    if '::' in config:
        return config
    return osp.relpath(osp.abspath(config), osp.abspath(folder))
