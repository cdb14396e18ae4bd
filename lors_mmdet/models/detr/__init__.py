"""LORS for mmdet's DETR family (DETR, Conditional-DETR, DAB-DETR,
Deformable-DETR, DINO, DDQ-DETR): encoder / decoder stacks by stack surgery
(:mod:`.stacks`); a trained detector compressed at chosen ranks:
:mod:`lors_mmdet.models.compression`; the files: :mod:`lors_mmdet.apis.conversion`
(stock <-> LORS checkpoints) and :mod:`lors_mmdet.apis.compression`.
"""
from .stacks import (LorsConditionalDETR, LorsDABDETR, LorsDDQDETR, LorsDETR,
                     LorsDeformableDETR, LorsDetrStacksMixin, LorsDINO,
                     LorsStacksMixin, parse_lors_cfg)

__all__ = [
    'LorsStacksMixin', 'LorsDetrStacksMixin', 'parse_lors_cfg', 'LorsDETR',
    'LorsConditionalDETR',
    'LorsDABDETR', 'LorsDeformableDETR', 'LorsDINO', 'LorsDDQDETR'
]
