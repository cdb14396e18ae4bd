"""AdaMixer's initial queries (the "RPN" of the query-based detector)."""
from typing import List

import torch
import torch.nn as nn
import torch.nn.functional as F
from mmengine.model import BaseModule
from mmengine.structures import InstanceData
from torch import Tensor

from mmdet.registry import MODELS
from mmdet.structures import SampleList
from mmdet.utils import InstanceList
from .xyzr import whole_image_xyzr, xyzr_to_xyxy


@MODELS.register_module()
class AdaMixerQueryGenerator(BaseModule):
    """Initial queries of AdaMixer.

    Contents are learned vectors (one per query, LayerNorm-ed without affine
    parameters); boxes are NOT learned: every query starts as the whole
    (unpadded) image in (x, y, z, r).

    Args:
        num_query (int): Queries per image. Defaults to 100.
        content_dim (int): Query dimension. Defaults to 256.
        init_cfg (dict, optional): Initialisation config.
        **kwargs: Ignored (the two-stage detector passes ``train_cfg``,
            ``test_cfg`` and ``num_classes`` to every RPN head).
    """

    def __init__(self,
                 num_query: int = 100,
                 content_dim: int = 256,
                 init_cfg=None,
                 **kwargs) -> None:
        super().__init__(init_cfg=init_cfg)
        if not isinstance(num_query, int) or num_query <= 0:
            raise ValueError(
                f'num_query must be a positive int, got {num_query!r}')
        self.num_query = num_query
        self.content_dim = content_dim
        self.init_content_features = nn.Embedding(num_query, content_dim)

    def _queries(self, x: List[Tensor],
                 batch_data_samples: SampleList) -> InstanceList:
        img_shapes = [
            sample.metainfo['img_shape'][:2] for sample in batch_data_samples
        ]
        xyzr = whole_image_xyzr(img_shapes, self.num_query, x[0].device)
        xyzr = xyzr.to(x[0].dtype)
        content = F.layer_norm(self.init_content_features.weight,
                               (self.content_dim, ))
        results = []
        for img_xyzr, (h, w) in zip(xyzr, img_shapes):
            whwh = img_xyzr.new_tensor([w, h, w, h])
            results.append(
                InstanceData(
                    xyzr=img_xyzr,
                    bboxes=xyzr_to_xyxy(img_xyzr),
                    features=content,
                    imgs_whwh=whwh.expand(self.num_query, 4)))
        return results

    def predict(self, x: List[Tensor], batch_data_samples: SampleList,
                **kwargs) -> InstanceList:
        """Initial queries of each image: InstanceData with ``xyzr``,
        ``bboxes``, ``features`` and ``imgs_whwh``."""
        return self._queries(x, batch_data_samples)

    def loss_and_predict(self, x: List[Tensor],
                         batch_data_samples: SampleList, **kwargs) -> tuple:
        """No loss of its own; returns ``({}, initial queries)``."""
        return dict(), self._queries(x, batch_data_samples)

    def loss(self, *args, **kwargs) -> dict:
        raise NotImplementedError(
            'AdaMixerQueryGenerator has no loss; use loss_and_predict')
