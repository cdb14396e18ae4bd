"""Prediction distillation from a frozen stock detector (teacher) to its
compressed LORS version (student), during a fine-tune. Off by default; whether
it helps is not measured yet (docs/compress.md).

A detector option::

    model = dict(
        type='LorsDINO', lors=dict(...),
        distill=dict(teacher_config='dino-4scale_r50_8xb2-12e_coco.py',
                     teacher_checkpoint='https://...pth',  # file or URL
                     weight=1.0,        # the whole distillation term
                     bbox_weight=5.0))  # boxes vs classes (DETR's L1 weight)

The teacher is built from ``teacher_config``'s ``model`` on the first
training step and loaded (strictly, through the safe checkpoint loaders) from
``teacher_checkpoint``. It is frozen, in eval mode, and held outside the
module tree: it is in no ``state_dict``, no optimizer and no DDP bucket.

Loss, on the last decoder layer's predictions, query by query: the student's
matching queries (its last ``Q`` queries; DINO's denoising queries come
first) against the teacher's ``Q`` queries of the same batch:

- classes: sigmoid heads (focal loss) - binary cross-entropy to the
  teacher's probabilities minus its entropy (zero when they agree); softmax
  heads (DETR) - KL(teacher || student) per query;
- boxes: L1 between the normalised (cx, cy, w, h) predictions.

Logged as ``loss_distill_cls`` and ``loss_distill_bbox``. Query ``i`` of the
two models is the same query where the queries are learned embeddings; with
two-stage query selection (DINO) it is as long as both pick the same top-k
proposals, i.e. while the encoders agree (exact when only the decoder is
compressed, before the fine-tune moves the encoder).
"""
import copy
import math
from typing import Dict, Mapping, Optional, Sequence

import torch
import torch.nn.functional as F
from torch import Tensor, nn

DISTILL_KEYS = ('teacher_config', 'teacher_checkpoint', 'weight',
                'bbox_weight')


def parse_distill_cfg(distill: Optional[Mapping],
                      key: str = 'distill') -> Optional[dict]:
    """Validate ``distill=dict(...)`` (None: off)."""
    if distill is None:
        return None
    if not isinstance(distill, Mapping):
        raise TypeError(f'{key} must be a dict, got {type(distill).__name__}')
    unknown = sorted(set(distill) - set(DISTILL_KEYS))
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in {key}; allowed: '
                         f'{list(DISTILL_KEYS)}')
    for name in ('teacher_config', 'teacher_checkpoint'):
        if not isinstance(distill.get(name), str) or not distill[name]:
            raise ValueError(f'{key}.{name} must be given (a path'
                             f'{" or URL" if "checkpoint" in name else ""})')
    cfg = {**dict(weight=1.0, bbox_weight=5.0), **distill}
    for name in ('weight', 'bbox_weight'):
        if (not isinstance(cfg[name], (int, float)) or isinstance(cfg[name], bool)
                or not math.isfinite(cfg[name]) or cfg[name] < 0):
            raise ValueError(f'{key}.{name} must be a finite number >= 0, got '
                             f'{cfg[name]!r}')
    return cfg


def build_teacher(teacher_config: str, teacher_checkpoint: str) -> nn.Module:
    """The stock model of ``teacher_config``, loaded from the checkpoint,
    frozen and in eval mode."""
    from mmdet.registry import MODELS
    from mmengine.registry import init_default_scope
    from mmengine.runner import load_checkpoint

    import lors_mmdet.compat  # noqa: F401  (safe loaders for every scheme)
    from lors_mmdet.engine.config_files import load_config
    cfg = load_config(teacher_config)
    init_default_scope(cfg.get('default_scope', 'mmdet'))
    teacher = MODELS.build(copy.deepcopy(cfg.model))
    load_checkpoint(teacher, teacher_checkpoint, map_location='cpu',
                    strict=True, logger='silent')
    teacher.requires_grad_(False)
    return teacher.eval()


def _last_layer(output: Sequence[Tensor], queries: int) -> Sequence[Tensor]:
    """(class scores, boxes) of the last decoder layer, last ``queries``."""
    scores, boxes = output[0], output[1]
    return scores[-1][:, -queries:], boxes[-1][:, -queries:]


def prediction_distill_loss(student: Sequence[Tensor],
                            teacher: Sequence[Tensor],
                            use_sigmoid: bool,
                            weight: float = 1.0,
                            bbox_weight: float = 5.0) -> Dict[str, Tensor]:
    """The distillation losses of a DETR head's outputs.

    Args:
        student / teacher: the heads' forward outputs, ``(all layers' class
            scores (L, B, Q, C), all layers' boxes (L, B, Q, 4))``; the
            student may have more queries (denoising ones, first).
        use_sigmoid: sigmoid class scores (focal loss) or softmax.
        weight / bbox_weight: see the module docstring.
    """
    t_scores, t_boxes = _last_layer(teacher, teacher[0].shape[-2])
    s_scores, s_boxes = _last_layer(student, t_scores.shape[-2])
    t_scores, t_boxes = t_scores.detach(), t_boxes.detach()
    if use_sigmoid:
        target = t_scores.sigmoid()
        entropy = F.binary_cross_entropy_with_logits(t_scores, target)
        cls = F.binary_cross_entropy_with_logits(s_scores, target) - entropy
    else:
        cls = F.kl_div(s_scores.log_softmax(-1).flatten(0, -2),
                       t_scores.log_softmax(-1).flatten(0, -2),
                       reduction='batchmean', log_target=True)
    bbox = F.l1_loss(s_boxes, t_boxes)
    return dict(loss_distill_cls=weight * cls,
                loss_distill_bbox=weight * bbox_weight * bbox)


class PredictionDistillMixin:
    """Adds ``distill=dict(...)`` to a DETR-family detector (see the module
    docstring); without it the detector is unchanged.

    Args:
        distill: the distillation settings, or None (off).
        *args, **kwargs: the detector's arguments.
    """

    def __init__(self, *args, distill: Optional[Mapping] = None,
                 **kwargs) -> None:
        self.distill_cfg = parse_distill_cfg(distill)
        super().__init__(*args, **kwargs)

    @property
    def distill_teacher(self) -> Optional[nn.Module]:
        """The teacher once built (None before the first training step)."""
        return self.__dict__.get('_distill_teacher')

    def _teacher_on(self, like: Tensor) -> nn.Module:
        teacher = self.distill_teacher
        if teacher is None:
            teacher = build_teacher(self.distill_cfg['teacher_config'],
                                    self.distill_cfg['teacher_checkpoint'])
            # not registered: outside state_dict, optimizer, DDP, .train()
            self.__dict__['_distill_teacher'] = teacher
        return teacher.to(like.device)

    def loss(self, batch_inputs: Tensor, batch_data_samples) -> dict:
        if self.distill_cfg is None:
            return super().loss(batch_inputs, batch_data_samples)
        outputs = []
        handle = self.bbox_head.register_forward_hook(
            lambda module, args, output: outputs.append(output))
        try:
            losses = super().loss(batch_inputs, batch_data_samples)
        finally:
            handle.remove()
        teacher = self._teacher_on(batch_inputs)
        with torch.no_grad():
            teacher_outputs = teacher._forward(
                batch_inputs.to(next(teacher.parameters()).dtype),
                batch_data_samples)
        losses.update(prediction_distill_loss(
            outputs[0], teacher_outputs,
            use_sigmoid=self.bbox_head.loss_cls.use_sigmoid,
            weight=self.distill_cfg['weight'],
            bbox_weight=self.distill_cfg['bbox_weight']))
        return losses
