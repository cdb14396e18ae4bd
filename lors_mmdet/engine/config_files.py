"""Config files for building models here: ``mmdet::`` names resolved, and the
pretrained-weight initialisation (a download) removed."""
import copy
import os.path as osp
from typing import Union

from mmengine.config import Config


def resolve_config_path(config: str) -> str:
    """The file of ``config``; ``mmdet::<path>`` names one of mmdet's installed
    configs, as in a config's ``_base_``."""
    if not config.startswith('mmdet::'):
        return config
    import mmdet
    path = osp.join(osp.dirname(mmdet.__file__), '.mim', 'configs',
                    config[len('mmdet::'):])
    if not osp.isfile(path):
        raise FileNotFoundError(f'{config}: no such config in mmdet {mmdet.__version__} '
                                f'(looked for {path})')
    return path


def load_config(config: Union[str, Config]) -> Config:
    if isinstance(config, str):
        return Config.fromfile(resolve_config_path(config))
    return copy.deepcopy(config)


def strip_pretrained(cfg: Config) -> Config:
    """Remove pretrained-weight init (it would download) from the model config."""
    backbone = cfg.model.get('backbone')
    if backbone is not None:
        backbone.init_cfg = None
        if 'pretrained' in backbone:
            backbone.pretrained = None
    return cfg
