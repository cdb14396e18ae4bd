"""Workflows where files become models and back, above :mod:`lors_mmdet.models`.

:mod:`.steps` holds the one implementation of each step (load a config, build
without downloads, read a checkpoint safely, load strictly, save atomically);
the workflows compose them: :func:`convert_checkpoint` (stock <-> LORS for
every detector with ``model.lors``; to-stock is also the merge for
deployment), :func:`compress` (a trained detector -> LORS config
and checkpoint, ready to fine-tune) and :func:`import_adamixer_release` (the
authors' AdaMixer / LORS-AdaMixer checkpoints).
"""
from .adamixer_release import import_adamixer_release
from .arguments import STACK_PARTS, parse_rank, parse_rank_overrides
from .compression import Compression, compress, format_compression
from .conversion import Conversion, convert_checkpoint, format_conversion
from .steps import (build_model, load_config, load_strictly, read_checkpoint,
                    resolve_config_path, save_checkpoint, strip_pretrained)

__all__ = ['build_model', 'load_config', 'load_strictly', 'read_checkpoint',
           'resolve_config_path', 'save_checkpoint', 'strip_pretrained',
           'Conversion', 'convert_checkpoint', 'format_conversion',
           'Compression', 'compress', 'format_compression', 'parse_rank',
           'parse_rank_overrides', 'STACK_PARTS', 'import_adamixer_release']
