"""SwinTransformerBranchDropPath: mmdet's Swin with stochastic depth switched
off on the attention branch; same weights, checkpoints and eval outputs as
mmdet's SwinTransformer. Also what the Swin-S configs build."""
import os.path as osp

import pytest
import torch
import torch.nn as nn
from mmcv.cnn.bricks.drop import DropPath
from mmengine.config import Config, ConfigDict

import lors_mmdet  # noqa: F401  (registers the plugin)
from lors_mmdet.models.backbones import SwinTransformerBranchDropPath
from mmdet.models.backbones import SwinTransformer
from mmdet.registry import MODELS

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
# rates grow linearly over the 4 blocks from 0 to drop_path_rate: the last
# block drops each sample with probability 0.5
TINY = dict(embed_dims=16, depths=(2, 2), num_heads=(2, 2), window_size=4,
            strides=(4, 2, 2, 2), out_indices=(0, 1), drop_path_rate=0.5)
BATCH = 16  # samples drawn independently by DropPath


def tiny(attn_drop_path=None) -> SwinTransformer:
    if attn_drop_path is None:
        model = SwinTransformer(**TINY)
    else:
        model = SwinTransformerBranchDropPath(
            **TINY, attn_drop_path=attn_drop_path)
    model.init_weights()
    return model


def last_block_branches(model, seed):
    """Outputs of the last block's attention and FFN branches (training
    mode) for one RNG draw: the residual sums x + attn(norm1(x)) and
    x + ffn(norm2(x)), and the branch input x."""
    model.train()
    block = model.stages[-1].blocks[-1]
    hw = (4, 4)
    x = torch.randn(BATCH, hw[0] * hw[1], 32,
                    generator=torch.Generator().manual_seed(100))
    with torch.no_grad():
        torch.manual_seed(seed)
        attn = x + block.attn(block.norm1(x), hw)
        torch.manual_seed(seed)
        ffn = block.ffn(block.norm2(x), identity=x)
    return x, attn, ffn


def dropped_samples(x, residual):
    """Samples whose branch was dropped: the residual sum is the input."""
    return [torch.equal(x[i], residual[i]) for i in range(len(x))]


def test_attention_branch_deterministic_ffn_branch_drops_in_training():
    model = tiny(attn_drop_path=False)
    x, attn_0, ffn_0 = last_block_branches(model, seed=0)
    _, attn_1, ffn_1 = last_block_branches(model, seed=1)
    # attention branch: kept for every sample, whatever the RNG draws
    assert torch.equal(attn_0, attn_1)
    assert not any(dropped_samples(x, attn_0))
    # FFN branch: dropped for some samples, kept (and rescaled) for others,
    # differently for another draw
    assert not torch.equal(ffn_0, ffn_1)
    for ffn in (ffn_0, ffn_1):
        dropped = dropped_samples(x, ffn)
        assert any(dropped) and not all(dropped)


@pytest.mark.parametrize('attn_drop_path', [None, True],
                         ids=['mmdet', 'variant-default'])
def test_attention_branch_drops_by_default(attn_drop_path):
    model = tiny(attn_drop_path)
    x, attn_0, ffn_0 = last_block_branches(model, seed=0)
    _, attn_1, ffn_1 = last_block_branches(model, seed=1)
    for first, second in ((attn_0, attn_1), (ffn_0, ffn_1)):
        assert not torch.equal(first, second)
        dropped = dropped_samples(x, first)
        assert any(dropped) and not all(dropped)


@pytest.mark.parametrize('attn_drop_path', [False, True])
def test_every_block_keeps_the_rates_of_mmdet(attn_drop_path):
    stock, model = tiny(), tiny(attn_drop_path)
    pairs = [(s, m) for stage, other in zip(stock.stages, model.stages)
             for s, m in zip(stage.blocks, other.blocks)]
    assert len(pairs) == 4
    for stock_block, block in pairs:
        assert type(block.ffn.dropout_layer) is DropPath
        assert block.ffn.dropout_layer.drop_prob == \
            stock_block.ffn.dropout_layer.drop_prob
        if attn_drop_path:
            assert type(block.attn.drop) is DropPath
            assert block.attn.drop.drop_prob == stock_block.attn.drop.drop_prob
        else:
            assert type(block.attn.drop) is nn.Identity


@pytest.mark.parametrize('attn_drop_path', [False, True])
def test_same_state_dict_keys_and_eval_outputs_as_mmdet(attn_drop_path):
    stock, model = tiny(), tiny(attn_drop_path)
    stock_state = stock.state_dict()
    assert list(model.state_dict()) == list(stock_state)
    assert {k: v.shape for k, v in model.state_dict().items()} == \
        {k: v.shape for k, v in stock_state.items()}
    model.load_state_dict(stock_state, strict=True)
    stock.eval()
    model.eval()
    images = torch.randn(2, 3, 32, 48, generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        expected, outputs = stock(images), model(images)
    assert len(outputs) == len(expected) == 2
    for out, ref in zip(outputs, expected):
        assert torch.equal(out, ref)


def test_loads_a_pretrained_swin_checkpoint_through_init_cfg(tmp_path):
    stock = tiny()
    path = str(tmp_path / 'swin.pth')
    torch.save({'state_dict': {f'backbone.{k}': v
                               for k, v in stock.state_dict().items()}}, path)
    model = SwinTransformerBranchDropPath(
        **TINY, attn_drop_path=False,
        # mmdet's Swin reads init_cfg as a config (attribute access)
        init_cfg=ConfigDict(type='Pretrained', checkpoint=path))
    model.init_weights()
    state = model.state_dict()
    for key, value in stock.state_dict().items():
        assert torch.equal(state[key], value), key


def test_attn_drop_path_must_be_a_bool():
    with pytest.raises(TypeError, match='attn_drop_path'):
        MODELS.build(dict(type='SwinTransformerBranchDropPath', **TINY,
                          attn_drop_path=0.0))


ADAMIXER_SWIN_S = \
    'configs/adamixer/adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco.py'
LORS_SWIN_S = ('configs/lors_adamixer/'
               'lors-adamixer_swin-s_8xb2-crop-ms-480-800-3x-300q_coco.py')


@pytest.mark.parametrize('config, options, expected_type, attn_drop_path', [
    (ADAMIXER_SWIN_S, {}, 'SwinTransformer', True),
    (LORS_SWIN_S, {}, 'SwinTransformerBranchDropPath', True),
    # the documented switch: --cfg-options model.backbone.attn_drop_path=False
    (LORS_SWIN_S, {'model.backbone.attn_drop_path': False},
     'SwinTransformerBranchDropPath', False),
], ids=['adamixer', 'lors-adamixer', 'lors-adamixer-attn_drop_path-False'])
def test_swin_s_configs_build_their_stochastic_depth(config, options,
                                                     expected_type,
                                                     attn_drop_path):
    cfg = Config.fromfile(osp.join(ROOT, config))
    cfg.merge_from_dict(options)
    backbone_cfg = cfg.model.backbone
    assert backbone_cfg.type == expected_type
    assert backbone_cfg.drop_path_rate == 0.2
    backbone_cfg.init_cfg = None
    backbone = MODELS.build(backbone_cfg)
    assert type(backbone).__name__ == expected_type
    blocks = [block for stage in backbone.stages for block in stage.blocks]
    assert len(blocks) == 24
    ffn_rates = [block.ffn.dropout_layer.drop_prob for block in blocks]
    assert ffn_rates[0] == 0 and ffn_rates[-1] == pytest.approx(0.2)
    for block, rate in zip(blocks, ffn_rates):
        if attn_drop_path:
            assert type(block.attn.drop) is DropPath
            assert block.attn.drop.drop_prob == rate
        else:
            assert type(block.attn.drop) is nn.Identity
