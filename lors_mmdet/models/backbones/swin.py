"""mmdet's Swin Transformer with stochastic depth chosen per residual branch."""
import torch.nn as nn

from mmdet.models.backbones import SwinTransformer
from mmdet.registry import MODELS


@MODELS.register_module()
class SwinTransformerBranchDropPath(SwinTransformer):
    """mmdet's ``SwinTransformer`` with a switch for stochastic depth on the
    attention branch of every block.

    mmdet's ``SwinBlock`` drops both residual branches (window attention and
    FFN) with the block's rate from ``drop_path_rate``. With
    ``attn_drop_path=False`` the attention branch is always kept, while the
    FFN branch keeps its per-block rate. The switch only replaces parameter-free
    DropPath modules after mmdet has built the network, so the state dict,
    pretrained Swin checkpoints, ``init_cfg`` and the eval-mode outputs are
    those of mmdet's ``SwinTransformer``.

    Args:
        attn_drop_path (bool): Apply DropPath on the attention branch, as
            mmdet does. Defaults to True.
        *args, **kwargs: Arguments of mmdet's ``SwinTransformer``.
    """

    def __init__(self, *args, attn_drop_path: bool = True, **kwargs) -> None:
        if not isinstance(attn_drop_path, bool):
            raise TypeError('SwinTransformerBranchDropPath: attn_drop_path '
                            'must be True or False, got '
                            f'{attn_drop_path!r}')
        super().__init__(*args, **kwargs)
        self.attn_drop_path = attn_drop_path
        if not attn_drop_path:
            for stage in self.stages:
                for block in stage.blocks:
                    # ShiftWindowMSA applies its DropPath as `self.drop`
                    # on the attention output, before the residual sum.
                    block.attn.drop = nn.Identity()
