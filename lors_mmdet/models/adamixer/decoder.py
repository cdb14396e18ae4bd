"""The AdaMixer decoder: a cascade of query-updating stages (an RoI head)."""
from typing import List, Optional, Sequence, Tuple, Union

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
from lors_mmdet.lors import SharedGenerator, SharedLinear
from lors_mmdet.lors._validate import check_adaptive_terms
from lors_mmdet.lors.static import check_factor_init
from .mixing import check_mixing_dims

RENAMED_NUM_TERMS = (
    'num_terms was renamed adaptive_terms (K_i, adaptive cores per stage); '
    'num_terms is the static residual\'s term count of model.lors.decoder')


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
        """Build one stage (the LORS decoder passes its shared modules)."""
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


@MODELS.register_module()
class LorsAdaMixerDecoder(AdaMixerDecoder):
    """The LORS-AdaMixer decoder (Li et al., CVPR 2024).

    The adaptive mixing of all stages shares ONE parameter generator (for the
    channel matrix M and the spatial matrix S) and ONE output projection, both
    registered here; each stage adds private low-rank residuals: an adaptive
    one (``adaptive_terms`` query-generated cores of size ``core_size``) to M
    and S, and a static one of rank ``out_proj_rank`` to the projection. The
    other stage weights stay private unless the detector's ``lors=dict(
    decoder=...)`` shares them (:class:`~lors_mmdet.models.adamixer.AdaMixer`).

    The mixing sizes (``feat_channels``, ``in_points``, ``out_points``,
    ``n_groups``) are those of the decoder, for all stages: a stage config
    may not set them differently.

    Args:
        num_stages (int): Number of stages. Defaults to 6.
        core_sizes (int | Sequence[int]): k of each stage, in
            [1, min(c, P_in, P_out)]. Defaults to 16.
        adaptive_terms (int | Sequence[int]): K_i of each stage, in [1, the
            terms needed to tile the larger of M (c x c) and S (P_out x P_in)
            with k x k cores] (see
            ``lors_mmdet.lors._validate.max_useful_terms``).
            Defaults to (1, 1, 2, 2, 3, 3). (Formerly ``num_terms``, which
            now raises: ``num_terms`` is the static residual's term count of
            ``model.lors.decoder``.)
        out_proj_ranks (int | Sequence[int]): r of each stage, in
            [1, min(c * P_out * G, content_dim)]. Defaults to 8.
        per_group_factors (bool): Every mixing group has its own static
            adaptive factors ``L``, ``R`` (per stage (G * K_i, ., .), as
            published). False shares them across the groups (fewer
            parameters, not the published model). Defaults to True.
        factor_init (str): Init of the non-zero private factors (``L``,
            ``R``, the projection's ``A``): ``'kaiming'`` (default: torch's
            ``kaiming_uniform_`` with default arguments on each stored
            tensor, as published) or ``'linear'`` (nn.Linear's bound, the
            LoRA convention the library defaults to).
        in_points (int): P_in. Defaults to 64.
        n_groups (int): G. Defaults to 2.
        **kwargs: As :class:`AdaMixerDecoder`.
    """

    def __init__(self,
                 num_stages: int = 6,
                 core_sizes: Union[int, Sequence[int]] = 16,
                 adaptive_terms: Union[int, Sequence[int]] = (1, 1, 2, 2,
                                                              3, 3),
                 out_proj_ranks: Union[int, Sequence[int]] = 8,
                 per_group_factors: bool = True,
                 factor_init: str = 'kaiming',
                 in_points: int = 64,
                 n_groups: int = 2,
                 content_dim: int = 256,
                 feat_channels: int = 256,
                 out_points: int = 128,
                 bbox_head: ConfigType = dict(type='LorsAdaMixerDecoderStage'),
                 **kwargs) -> None:
        if 'num_terms' in kwargs:
            raise TypeError(RENAMED_NUM_TERMS)
        if not isinstance(num_stages, int) or num_stages <= 0:
            raise ValueError(
                f'num_stages must be a positive int, got {num_stages!r}')
        group_channels = check_mixing_dims(feat_channels, n_groups, in_points,
                                           out_points)
        out_proj_in = group_channels * out_points * n_groups
        self.core_sizes = self._per_stage(
            'core_sizes', core_sizes, num_stages, 1,
            min(group_channels, in_points, out_points))
        self.adaptive_terms = self._per_stage('adaptive_terms',
                                              adaptive_terms, num_stages, 1,
                                              None)
        for stage, (k, terms) in enumerate(zip(self.core_sizes,
                                               self.adaptive_terms)):
            shapes = {'channel-mixing M': (group_channels, group_channels),
                      'spatial-mixing S': (out_points, in_points)}
            check_adaptive_terms(terms, k, shapes,
                                 f'adaptive_terms[{stage}]')
        self.out_proj_ranks = self._per_stage('out_proj_ranks', out_proj_ranks,
                                              num_stages, 1,
                                              min(out_proj_in, content_dim))
        if not isinstance(per_group_factors, bool):
            raise TypeError('per_group_factors must be a bool, got '
                            f'{per_group_factors!r}')
        self.per_group_factors = per_group_factors
        self.factor_init = check_factor_init(factor_init)
        super().__init__(
            num_stages=num_stages,
            content_dim=content_dim,
            feat_channels=feat_channels,
            in_points=in_points,
            out_points=out_points,
            n_groups=n_groups,
            bbox_head=bbox_head,
            **kwargs)

    @staticmethod
    def _per_stage(key: str, value, num_stages: int, low: int,
                   high: Optional[int]) -> List[int]:
        """Expand an int to all stages, or check a per-stage list."""
        if isinstance(value, int):
            values = [value] * num_stages
        elif isinstance(value, (list, tuple)):
            if len(value) != num_stages:
                raise ValueError(f'{key} has {len(value)} entries, expected '
                                 f'num_stages={num_stages}: {list(value)}')
            values = list(value)
        else:
            raise TypeError(f'{key} must be an int or a list of ints, got '
                            f'{value!r}')
        for stage, item in enumerate(values):
            if not isinstance(item, int) or isinstance(item, bool) or \
                    item < low or (high is not None and item > high):
                bounds = f'[{low}, {high}]' if high is not None \
                    else f'>= {low}'
                raise ValueError(f'{key}[{stage}] = {item!r} is out of range '
                                 f'{bounds}')
        return values

    def init_bbox_head(self, bbox_roi_extractor: ConfigType,
                       bbox_head: ConfigType) -> None:
        """Register the shared mixing modules once, then build the stages."""
        c = self.feat_channels // self.n_groups
        self.shared_mixing_generator = SharedGenerator(
            self.content_dim,
            self.n_groups, [(c, c), (self.out_points, self.in_points)],
            num_layers=self.num_stages)
        self.shared_mixing_out_proj = SharedLinear(
            c * self.out_points * self.n_groups,
            self.content_dim,
            num_layers=self.num_stages)
        super().init_bbox_head(bbox_roi_extractor, bbox_head)

    def _build_stage(self, stage: int, head_cfg: ConfigType):
        defaults = self._stage_defaults()
        for key in ('feat_channels', 'in_points', 'out_points', 'n_groups'):
            if key in head_cfg and head_cfg[key] != defaults[key]:
                raise ValueError(
                    f'bbox_head[{stage}].{key}={head_cfg[key]} differs from '
                    f'the decoder\'s {key}={defaults[key]}: the mixing sizes '
                    'are shared by all stages, set them on the decoder only')
        defaults.update(
            shared_generator=self.shared_mixing_generator,
            shared_out_proj=self.shared_mixing_out_proj,
            core_size=self.core_sizes[stage],
            adaptive_terms=self.adaptive_terms[stage],
            out_proj_rank=self.out_proj_ranks[stage],
            per_group_factors=self.per_group_factors,
            factor_init=self.factor_init)
        return MODELS.build(head_cfg, default_args=defaults)

    def init_weights(self) -> None:
        """Stages first (their private parts), then the shared modules:
        zero generator weight (default bias), default Linear init of the
        shared projection, as in the published LORS-AdaMixer."""
        super().init_weights()
        with torch.no_grad():
            self.shared_mixing_generator.reset_parameters()
            self.shared_mixing_out_proj.reset_parameters()
