"""The AdaMixer decoder: a cascade of query-updating stages (an RoI head)."""
from typing import List, Sequence, Tuple

import torch
from mmengine.model import ModuleList
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.models.roi_heads import CascadeRoIHead
from mmdet.models.task_modules.samplers import PseudoSampler
from mmdet.models.utils import empty_instances, unpack_gt_instances
from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import ConfigType, InstanceList, OptConfigType
from .mixing import check_mixing_dims

REMOVED_LORS_TYPES = (
    '{type!r} was removed: LORS-AdaMixer is the stock AdaMixer (roi_head '
    "type='AdaMixerDecoder' with n_groups, in_points, out_points; stages "
    "type='AdaMixerDecoderStage') plus model.lors.decoder = dict(include="
    "['adaptive_mixing.out_proj'], rank=<out_proj_ranks>, factor_init="
    "'kaiming', adaptive=dict(core_size=<core_sizes>, adaptive_terms=<"
    "adaptive_terms>, per_group_factors=True, factor_init='kaiming')), as in "
    'configs/_base_/models/lors-adamixer_decoder.py. Checkpoints written '
    'with it load into the new config as they are.')


@MODELS.register_module()
class AdaMixerDecoder(CascadeRoIHead):
    """AdaMixer's decoder (Gao et al., CVPR 2022) as a cascade RoI head.

    Each stage updates every query's content and (x, y, z, r) box from the
    feature pyramid directly (3D sampling), so unlike Sparse R-CNN there is no
    RoI feature extractor. Every stage is trained against its own Hungarian
    matching; box coordinates are not back-propagated from one stage into the
    next (the boxes are detached between stages, as in the reference model).

    Proposals come from :class:`AdaMixerQueryGenerator` as a list of
    InstanceData with ``xyzr``, ``features`` (the query contents) and
    ``imgs_whwh``.

    Args:
        num_stages (int): Number of stages. Defaults to 6.
        stage_loss_weights (Sequence[float]): Loss weight of each stage; a
            stage with weight <= 0 is not matched nor trained.
        content_dim (int): Query dimension. Defaults to 256.
        feat_channels (int): Channels of the pyramid. Defaults to 256.
        in_points (int): Sampling points per group, P_in. Defaults to 32.
        out_points (int): Spatial mixing outputs per group, P_out.
            Defaults to 128.
        n_groups (int): Sampling / mixing groups, G. Defaults to 4.
        featmap_strides (Sequence[int]): Strides of the pyramid levels.
            Defaults to (4, 8, 16, 32).
        bbox_head (dict | list[dict]): Config of the stages
            (:class:`AdaMixerDecoderStage`), one for all or one per stage.
            ``content_dim`` and the four mixing sizes above are defaults for
            keys a stage config leaves out.
        train_cfg (list[dict], optional): Assigner / sampler per stage.
        test_cfg (dict, optional): ``max_per_img``.
        init_cfg (dict, optional): Initialisation config.
    """

    def __init__(self,
                 num_stages: int = 6,
                 stage_loss_weights: Sequence[float] = (1, 1, 1, 1, 1, 1),
                 content_dim: int = 256,
                 feat_channels: int = 256,
                 in_points: int = 32,
                 out_points: int = 128,
                 n_groups: int = 4,
                 featmap_strides: Sequence[int] = (4, 8, 16, 32),
                 bbox_head: ConfigType = dict(type='AdaMixerDecoderStage'),
                 train_cfg: OptConfigType = None,
                 test_cfg: OptConfigType = None,
                 init_cfg: OptConfigType = None) -> None:
        if not isinstance(num_stages, int) or num_stages <= 0:
            raise ValueError(
                f'num_stages must be a positive int, got {num_stages!r}')
        if len(stage_loss_weights) != num_stages:
            raise ValueError(
                f'stage_loss_weights has {len(stage_loss_weights)} entries, '
                f'expected num_stages={num_stages}')
        if isinstance(bbox_head, (list, tuple)) and \
                len(bbox_head) != num_stages:
            raise ValueError(f'bbox_head has {len(bbox_head)} entries, '
                             f'expected num_stages={num_stages}')
        if train_cfg is not None and len(train_cfg) != num_stages:
            raise ValueError(f'train_cfg (rcnn) has {len(train_cfg)} entries, '
                             f'expected num_stages={num_stages}')
        check_mixing_dims(feat_channels, n_groups, in_points, out_points)
        self.content_dim = content_dim
        self.feat_channels = feat_channels
        self.in_points = in_points
        self.out_points = out_points
        self.n_groups = n_groups
        self.featmap_strides = list(featmap_strides)
        super().__init__(
            num_stages=num_stages,
            stage_loss_weights=stage_loss_weights,
            # The stages sample the pyramid themselves; CascadeRoIHead only
            # requires this argument to be given.
            bbox_roi_extractor=dict(),
            bbox_head=bbox_head,
            train_cfg=train_cfg,
            test_cfg=test_cfg,
            init_cfg=init_cfg)
        if train_cfg is not None:
            for stage, sampler in enumerate(self.bbox_sampler):
                if not isinstance(sampler, PseudoSampler):
                    raise ValueError(
                        f'train_cfg[{stage}].sampler must be PseudoSampler, '
                        f'got {type(sampler).__name__}')

    def init_bbox_head(self, bbox_roi_extractor: ConfigType,
                       bbox_head: ConfigType) -> None:
        """Build the stages (there is no RoI extractor)."""
        if not isinstance(bbox_head, (list, tuple)):
            bbox_head = [bbox_head for _ in range(self.num_stages)]
        self.bbox_head = ModuleList()
        for stage, head in enumerate(bbox_head):
            self.bbox_head.append(self._build_stage(stage, head))

    def _stage_defaults(self) -> dict:
        return dict(
            content_dim=self.content_dim,
            feat_channels=self.feat_channels,
            in_points=self.in_points,
            out_points=self.out_points,
            n_groups=self.n_groups)

    def _build_stage(self, stage: int, head_cfg: ConfigType):
        """Build one stage, the decoder's sizes as defaults."""
        return MODELS.build(head_cfg, default_args=self._stage_defaults())

    def _stage_forward(self, stage: int, feats: Tuple[Tensor], xyzr: Tensor,
                       content: Tensor) -> dict:
        head = self.bbox_head[stage]
        cls_score, xyzr_delta, content = head(feats, xyzr, content,
                                              self.featmap_strides)
        xyzr, bboxes = head.refine_xyzr(xyzr, xyzr_delta)
        return dict(
            cls_score=cls_score, xyzr=xyzr, bboxes=bboxes, content=content)

    @staticmethod
    def _stack_queries(rpn_results_list: InstanceList) -> tuple:
        xyzr = torch.stack([res.xyzr for res in rpn_results_list])
        content = torch.stack([res.features for res in rpn_results_list])
        imgs_whwh = torch.stack([res.imgs_whwh for res in rpn_results_list])
        return xyzr, content, imgs_whwh

    def _match(self, stage: int, cls_score: Tensor, bboxes: Tensor,
               batch_gt_instances: InstanceList,
               batch_img_metas: List[dict]) -> list:
        sampling_results = []
        for i, (gt_instances, img_meta) in enumerate(
                zip(batch_gt_instances, batch_img_metas)):
            pred_instances = InstanceData(
                bboxes=bboxes[i].detach(),
                scores=cls_score[i].detach(),
                priors=bboxes[i].detach())
            assign_result = self.bbox_assigner[stage].assign(
                pred_instances=pred_instances,
                gt_instances=gt_instances,
                img_meta=img_meta)
            sampling_results.append(self.bbox_sampler[stage].sample(
                assign_result, pred_instances, gt_instances))
        return sampling_results

    def loss(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
             batch_data_samples: SampleList) -> dict:
        """Losses of all stages, named ``s{stage}.{loss}``.

        Args:
            x (tuple[Tensor]): Feature pyramid.
            rpn_results_list (list[InstanceData]): Initial queries per image.
            batch_data_samples (list[DetDataSample]): Ground truth and meta.

        Returns:
            dict[str, Tensor]: Weighted losses (and ``pos_acc``) per stage.
        """
        batch_gt_instances, _, batch_img_metas = unpack_gt_instances(
            batch_data_samples)
        xyzr, content, imgs_whwh = self._stack_queries(rpn_results_list)
        losses = {}
        for stage in range(self.num_stages):
            results = self._stage_forward(stage, x, xyzr, content)
            xyzr = results['xyzr'].detach()
            content = results['content']
            weight = self.stage_loss_weights[stage]
            if weight <= 0:
                continue
            cls_score, bboxes = results['cls_score'], results['bboxes']
            sampling_results = self._match(stage, cls_score, bboxes,
                                           batch_gt_instances,
                                           batch_img_metas)
            stage_losses = self.bbox_head[stage].loss_and_target(
                cls_score.flatten(0, 1),
                bboxes.flatten(0, 1),
                sampling_results,
                self.train_cfg[stage],
                imgs_whwh=imgs_whwh.flatten(0, 1))['loss_bbox']
            for name, value in stage_losses.items():
                losses[f's{stage}.{name}'] = \
                    value * weight if 'loss' in name else value
        return losses

    def predict_bbox(self,
                     x: Tuple[Tensor],
                     batch_img_metas: List[dict],
                     rpn_results_list: InstanceList,
                     rcnn_test_cfg: ConfigType,
                     rescale: bool = False) -> InstanceList:
        """Detections of the last stage: the ``max_per_img`` best
        (query, class) pairs of each image, no NMS.

        Returns:
            list[InstanceData]: ``bboxes``, ``scores``, ``labels`` per image.
        """
        if all(len(res) == 0 for res in rpn_results_list):
            return empty_instances(
                batch_img_metas, x[0].device, task_type='bbox')
        xyzr, content, _ = self._stack_queries(rpn_results_list)
        for stage in range(self.num_stages):
            results = self._stage_forward(stage, x, xyzr, content)
            xyzr, content = results['xyzr'], results['content']
        cls_score, bboxes = results['cls_score'], results['bboxes']

        last_head = self.bbox_head[-1]
        num_classes = last_head.num_classes
        if last_head.loss_cls.use_sigmoid:
            scores = cls_score.sigmoid()
        else:
            scores = cls_score.softmax(-1)[..., :-1]

        results_list = []
        for img_id, img_meta in enumerate(batch_img_metas):
            num_dets = min(rcnn_test_cfg.max_per_img, scores[img_id].numel())
            top_scores, top_inds = scores[img_id].flatten().topk(
                num_dets, sorted=False)
            labels = top_inds % num_classes
            det_bboxes = bboxes[img_id][torch.div(
                top_inds, num_classes, rounding_mode='floor')]
            if rescale:
                scale_factor = det_bboxes.new_tensor(
                    img_meta['scale_factor']).repeat(2)
                det_bboxes = det_bboxes / scale_factor
            results_list.append(
                InstanceData(
                    bboxes=det_bboxes, scores=top_scores, labels=labels))
        return results_list

    def forward(self, x: Tuple[Tensor], rpn_results_list: InstanceList,
                batch_data_samples: SampleList) -> tuple:
        """Raw outputs of every stage (no matching, no post-processing).

        Returns:
            tuple[dict]: Per stage ``cls_score``, ``xyzr``, ``bboxes`` and
            ``content``.
        """
        xyzr, content, _ = self._stack_queries(rpn_results_list)
        outputs = []
        for stage in range(self.num_stages):
            results = self._stage_forward(stage, x, xyzr, content)
            outputs.append(results)
            xyzr, content = results['xyzr'], results['content']
        return tuple(outputs)


def _removed(type_name: str):

    def build(**kwargs):
        raise ValueError(REMOVED_LORS_TYPES.format(type=type_name))

    return build


# Configs of the former LORS-AdaMixer classes fail with the way to the new one.
for _name in ('LorsAdaMixerDecoder', 'LorsAdaMixerDecoderStage'):
    MODELS.register_module(name=_name, module=_removed(_name))
