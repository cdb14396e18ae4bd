"""One AdaMixer decoder stage (a BBoxHead of the cascade)."""
from typing import List, Optional, Sequence, Tuple

import torch
import torch.nn as nn
from mmcv.cnn import build_activation_layer, build_norm_layer
from mmcv.cnn.bricks.transformer import FFN, MultiheadAttention
from mmengine.model import bias_init_with_prob
from torch import Tensor

from mmdet.models.losses import accuracy
from mmdet.models.roi_heads.bbox_heads import BBoxHead, DIIHead
from mmdet.models.task_modules import SamplingResult
from mmdet.registry import MODELS
from mmdet.structures.bbox import bbox_overlaps
from mmdet.utils import ConfigType, reduce_mean
from .mixing import AdaptiveMixing, check_mixing_dims
from .sampling_3d import make_sample_points, sampling_3d
from .xyzr import refine_xyzr, xyzr_position_encoding, xyzr_to_xyxy


def _fc_branch(num_fcs: int, channels: int) -> nn.ModuleList:
    """``num_fcs`` x (Linear, LayerNorm, ReLU)."""
    layers = nn.ModuleList()
    for _ in range(num_fcs):
        layers.append(nn.Linear(channels, channels, bias=True))
        layers.append(build_norm_layer(dict(type='LN'), channels)[1])
        layers.append(build_activation_layer(dict(type='ReLU', inplace=True)))
    return layers


@MODELS.register_module()
class AdaMixerDecoderStage(BBoxHead):
    """A stage of the AdaMixer decoder (Gao et al., CVPR 2022).

    Query update, in order: self-attention over the queries with a sinusoidal
    embedding of their boxes and an attention bias ``tau_h * log(IoF)`` (one
    learned ``tau`` per head); adaptive 3D sampling of the feature pyramid
    around each query box; adaptive channel + spatial mixing; FFN. Each of the
    four blocks ends with a LayerNorm. A classification branch and a box
    branch (predicting an (x, y, z, r) update) read the updated query.

    Args:
        num_classes (int): Number of object classes. Defaults to 80.
        num_ffn_fcs (int): Layers of the FFN. Defaults to 2.
        num_heads (int): Self-attention heads. Defaults to 8.
        num_cls_fcs (int): Hidden layers of the cls branch. Defaults to 1.
        num_reg_fcs (int): Hidden layers of the box branch. Defaults to 1.
        feedforward_channels (int): Hidden size of the FFN. Defaults to 2048.
        content_dim (int): Query dimension. Defaults to 256.
        feat_channels (int): Channels of the feature pyramid. Defaults to 256.
        dropout (float): Dropout of attention and FFN. Defaults to 0.
        ffn_act_cfg (dict): FFN activation. Defaults to ReLU.
        in_points (int): Sampling points per group, P_in. Defaults to 32.
        out_points (int): Spatial mixing outputs per group, P_out.
            Defaults to 128.
        n_groups (int): Sampling / mixing groups, G. Defaults to 4.
        sampling_tau (float): Width of the Gaussian level weights.
            Defaults to 2.
        loss_iou (dict): GIoU loss. Defaults to weight 2.
        init_cfg (None): Must be None; initialisation is fixed by
            :meth:`init_weights`.
        **kwargs: Passed to :class:`BBoxHead` (``loss_cls``, ``loss_bbox``,
            ...).
    """

    def __init__(self,
                 num_classes: int = 80,
                 num_ffn_fcs: int = 2,
                 num_heads: int = 8,
                 num_cls_fcs: int = 1,
                 num_reg_fcs: int = 1,
                 feedforward_channels: int = 2048,
                 content_dim: int = 256,
                 feat_channels: int = 256,
                 dropout: float = 0.0,
                 ffn_act_cfg: ConfigType = dict(type='ReLU', inplace=True),
                 in_points: int = 32,
                 out_points: int = 128,
                 n_groups: int = 4,
                 sampling_tau: float = 2.0,
                 loss_iou: ConfigType = dict(type='GIoULoss', loss_weight=2.0),
                 init_cfg: Optional[ConfigType] = None,
                 **kwargs) -> None:
        if init_cfg is not None:
            raise ValueError('AdaMixerDecoderStage has a fixed '
                             'initialisation; init_cfg must be None, got '
                             f'{init_cfg!r}')
        if content_dim % num_heads != 0:
            raise ValueError(f'num_heads={num_heads} must divide '
                             f'content_dim={content_dim}')
        if content_dim % 8 != 0:
            raise ValueError('content_dim must be a multiple of 8 (the box '
                             f'embedding has 4 sin/cos parts), got '
                             f'{content_dim}')
        check_mixing_dims(feat_channels, n_groups, in_points, out_points)
        # roi_feat_size=1 keeps BBoxHead from building RoI-sized layers: our
        # own cls / reg layers replace its fc_cls / fc_reg below.
        super().__init__(
            num_classes=num_classes,
            in_channels=content_dim,
            roi_feat_size=1,
            reg_decoded_bbox=True,
            reg_class_agnostic=True,
            init_cfg=init_cfg,
            **kwargs)
        self.loss_iou = MODELS.build(loss_iou)
        self.content_dim = content_dim
        self.feat_channels = feat_channels
        self.in_points = in_points
        self.out_points = out_points
        self.n_groups = n_groups
        self.sampling_tau = sampling_tau

        self.attention = MultiheadAttention(content_dim, num_heads, dropout)
        self.attention_norm = build_norm_layer(dict(type='LN'), content_dim)[1]
        # log(IoF) of two queries' boxes, scaled per head, biases attention
        self.iof_tau = nn.Parameter(torch.ones(num_heads))

        self.sampling_offset_generator = nn.Linear(content_dim,
                                                   n_groups * in_points * 3)
        self.adaptive_mixing = AdaptiveMixing(content_dim, feat_channels,
                                              in_points, out_points, n_groups)
        self.mixing_norm = build_norm_layer(dict(type='LN'), content_dim)[1]

        self.ffn = FFN(
            content_dim,
            feedforward_channels,
            num_ffn_fcs,
            act_cfg=ffn_act_cfg,
            ffn_drop=dropout)
        self.ffn_norm = build_norm_layer(dict(type='LN'), content_dim)[1]

        self.cls_fcs = _fc_branch(num_cls_fcs, content_dim)
        cls_channels = num_classes if self.loss_cls.use_sigmoid \
            else num_classes + 1
        self.fc_cls = nn.Linear(content_dim, cls_channels)
        self.reg_fcs = _fc_branch(num_reg_fcs, content_dim)
        self.fc_reg = nn.Linear(content_dim, 4)

    @torch.no_grad()
    def init_weights(self) -> None:
        """AdaMixer's initialisation.

        Xavier-uniform for every matrix of the stage, then: cls bias for a
        prior of 0.01 (focal loss), zero box branch output (the first
        prediction keeps the initial box), ``tau ~ U(0, 4)``, sampling offsets
        with zero weight and a bias that spreads the points over the box
        (a regular grid when P_in is a square number, otherwise uniform in
        [-0.5, 0.5] box units) one level below the box scale (dz = -1), and
        the mixing block's own init (zero generator weight).
        """
        super().init_weights()
        for param in self.parameters():
            if param.dim() > 1:
                nn.init.xavier_uniform_(param)
        if self.loss_cls.use_sigmoid:
            nn.init.constant_(self.fc_cls.bias, bias_init_with_prob(0.01))
        nn.init.zeros_(self.fc_reg.weight)
        nn.init.zeros_(self.fc_reg.bias)
        nn.init.uniform_(self.iof_tau, 0.0, 4.0)
        self._init_sampling_offsets()
        self.adaptive_mixing.init_weights()

    def _init_sampling_offsets(self) -> None:
        generator = self.sampling_offset_generator
        nn.init.zeros_(generator.weight)
        bias = generator.bias.data.view(self.n_groups, self.in_points, 3)
        side = int(round(self.in_points**0.5))
        if side * side == self.in_points:
            # centres of a side x side grid over [-0.5, 0.5]^2
            centres = (torch.arange(side, dtype=bias.dtype) + 0.5) / side - 0.5
            grid_a = centres.view(-1, 1).expand(side, side).flatten()
            grid_b = centres.view(1, -1).expand(side, side).flatten()
            bias[..., 0] = grid_a
            bias[..., 1] = grid_b
        else:
            nn.init.uniform_(bias[..., 0:2], -0.5, 0.5)
        nn.init.constant_(bias[..., 2], -1.0)

    def _self_attention(self, xyzr: Tensor, content: Tensor) -> Tensor:
        with torch.no_grad():
            boxes = xyzr_to_xyxy(xyzr)
            iof = bbox_overlaps(boxes, boxes, mode='iof')  # (B, N, N)
            log_iof = (iof + 1e-7).log()
            pos = xyzr_position_encoding(xyzr, content.size(-1) // 4)
        # per-head additive bias, (B * heads, N, N) as nn.MultiheadAttention
        # expects for a float attn_mask
        attn_bias = (log_iof[:, None] * self.iof_tau.view(1, -1, 1, 1))
        attn_bias = attn_bias.flatten(0, 1)
        # the residual of mmcv's MultiheadAttention is its input, i.e. the
        # content with the box embedding added (as in the reference model)
        query = (content + pos).transpose(0, 1)
        content = self.attention(query, attn_mask=attn_bias)
        return self.attention_norm(content).transpose(0, 1)

    def forward(self, feats: Sequence[Tensor], xyzr: Tensor, content: Tensor,
                featmap_strides: Sequence[int]) -> Tuple[Tensor, Tensor, Tensor]:
        """Update the queries once.

        Args:
            feats (Sequence[Tensor]): Feature pyramid, each (B, C, H, W).
            xyzr (Tensor): Query boxes (B, N, 4).
            content (Tensor): Query contents (B, N, content_dim).
            featmap_strides (Sequence[int]): Stride of each level.

        Returns:
            tuple[Tensor]: ``cls_score`` (B, N, cls_channels), ``xyzr_delta``
            (B, N, 4) and the updated ``content`` (B, N, content_dim).
        """
        content = self._self_attention(xyzr, content)

        offsets = self.sampling_offset_generator(content)
        points = make_sample_points(offsets, xyzr, self.n_groups,
                                    self.in_points)
        sampled = sampling_3d(points, feats, featmap_strides,
                              self.sampling_tau)
        content = self.mixing_norm(self.adaptive_mixing(sampled, content))

        content = self.ffn_norm(self.ffn(content))

        cls_feat = content
        for layer in self.cls_fcs:
            cls_feat = layer(cls_feat)
        reg_feat = content
        for layer in self.reg_fcs:
            reg_feat = layer(reg_feat)
        return self.fc_cls(cls_feat), self.fc_reg(reg_feat), content

    @staticmethod
    def refine_xyzr(xyzr: Tensor, xyzr_delta: Tensor) -> Tuple[Tensor, Tensor]:
        """Refined boxes as (x, y, z, r) and as (x1, y1, x2, y2)."""
        xyzr = refine_xyzr(xyzr, xyzr_delta)
        return xyzr, xyzr_to_xyxy(xyzr)

    def loss_and_target(self,
                        cls_score: Tensor,
                        bbox_pred: Tensor,
                        sampling_results: List[SamplingResult],
                        rcnn_train_cfg: ConfigType,
                        imgs_whwh: Tensor,
                        concat: bool = True,
                        reduction_override: Optional[str] = None) -> dict:
        """Losses of one stage against its Hungarian matching.

        Focal loss over all queries; L1 on boxes normalised by the image
        size and GIoU on the matched queries. All are averaged by the number
        of matched queries (over all GPUs, at least 1). This is Sparse
        R-CNN's ``DIIHead.loss_and_target`` but for two documented changes:
        the average factor is clamped to at least 1 (DIIHead divides by ~0
        for a batch without objects) and ``pos_acc`` is 0, not NaN, without
        matched queries.

        Args:
            cls_score (Tensor): (B * N, cls_channels).
            bbox_pred (Tensor): Decoded boxes (B * N, 4), x1y1x2y2 pixels.
            sampling_results (list[SamplingResult]): Matching of each image.
            rcnn_train_cfg (ConfigDict): This stage's train config.
            imgs_whwh (Tensor): (B * N, 4) image w, h, w, h of each query.
            concat (bool): Concatenate the targets of the images.
                Defaults to True.
            reduction_override (str, optional): Loss reduction override.

        Returns:
            dict: ``loss_bbox`` (a dict of the losses) and ``bbox_targets``.
        """
        targets = self.get_targets(sampling_results, rcnn_train_cfg, concat)
        labels, label_weights, bbox_targets, bbox_weights = targets
        pos = (labels >= 0) & (labels < self.num_classes)
        avg_factor = reduce_mean(pos.sum().float()).clamp(min=1.0)

        losses = dict()
        losses['loss_cls'] = self.loss_cls(
            cls_score,
            labels,
            label_weights,
            avg_factor=avg_factor,
            reduction_override=reduction_override)
        if pos.any():
            losses['pos_acc'] = accuracy(cls_score[pos], labels[pos])
            pos_pred = bbox_pred[pos]
            pos_target = bbox_targets[pos]
            pos_whwh = imgs_whwh[pos]
            losses['loss_bbox'] = self.loss_bbox(
                pos_pred / pos_whwh,
                pos_target / pos_whwh,
                bbox_weights[pos],
                avg_factor=avg_factor)
            losses['loss_iou'] = self.loss_iou(
                pos_pred, pos_target, bbox_weights[pos], avg_factor=avg_factor)
        else:
            # keep every loss in the graph (DDP) even without any object
            losses['pos_acc'] = cls_score.new_zeros(())
            losses['loss_bbox'] = bbox_pred.sum() * 0
            losses['loss_iou'] = bbox_pred.sum() * 0
        return dict(loss_bbox=losses, bbox_targets=targets)

    # Sparse R-CNN's targets, reused as they are: in query order, a matched
    # query gets its object's class and (decoded, reg_decoded_bbox=True) box,
    # the others the background class.
    get_targets = DIIHead.get_targets
    _get_targets_single = DIIHead._get_targets_single
