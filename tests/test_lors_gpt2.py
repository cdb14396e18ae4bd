"""The stack surgery on a real Hugging Face GPT-2 (``transformers``' Conv1D
projections, stored transposed): a tiny model built from a config, no
download. Skipped when ``transformers`` is not installed."""
import pytest
import torch

transformers = pytest.importorskip('transformers')
from transformers.pytorch_utils import Conv1D  # noqa: E402

from lors_mmdet.lors import (LorsLinear, apply_lors,  # noqa: E402
                             count_parameters, merge_lors)

NUM_LAYERS, VOCAB = 3, 100
PATHS = ['attn.c_attn', 'attn.c_proj', 'mlp.c_fc', 'mlp.c_proj']


def config() -> 'transformers.GPT2Config':
    return transformers.GPT2Config(
        n_layer=NUM_LAYERS, n_embd=32, n_head=4, n_positions=64,
        vocab_size=VOCAB, resid_pdrop=0., embd_pdrop=0., attn_pdrop=0.,
        bos_token_id=0, eos_token_id=VOCAB - 1, pad_token_id=VOCAB - 1)


def gpt2(seed: int = 0) -> 'transformers.GPT2LMHeadModel':
    """float64, eval, every weight different (stock init std 0.02 would make
    the attention nearly uniform)."""
    torch.manual_seed(seed)
    model = transformers.GPT2LMHeadModel(config()).double().eval()
    with torch.no_grad():
        for name, param in model.named_parameters():
            if 'ln_' not in name:
                param.normal_(0, 0.3)
    return model


def prompt() -> torch.Tensor:
    generator = torch.Generator().manual_seed(3)
    return torch.randint(0, VOCAB - 1, (2, 7), generator=generator)


def generate(model, ids: torch.Tensor) -> torch.Tensor:
    return model.generate(ids, attention_mask=torch.ones_like(ids),
                          max_new_tokens=12, do_sample=False,
                          pad_token_id=VOCAB - 1)


def test_full_rank_from_dense_gpt2_computes_the_stock_model_and_merges_back():
    model = gpt2()
    stock_keys = list(model.state_dict())
    stock_count = sum(p.numel() for p in model.parameters())
    ids = prompt()
    with torch.no_grad():
        expected = model(ids).logits
    expected_tokens = generate(model, ids)
    assert (expected_tokens[:, ids.shape[1]:] != expected_tokens[0, -1]).any()

    stack = apply_lors(model.transformer, 'h',
                       dict(rank='full', init='dense'))
    assert sorted(stack.plans) == PATHS
    for block in model.transformer.h:
        for path in PATHS:
            assert isinstance(block.get_submodule(path), LorsLinear)
    assert stack.shared_linear(0, 'mlp.c_fc').weight.shape == (128, 32)
    assert count_parameters(model).stock_equivalent == stock_count
    with torch.no_grad():
        lors_logits = model(ids).logits
    torch.testing.assert_close(lors_logits, expected, rtol=0, atol=1e-9)
    assert torch.equal(generate(model, ids), expected_tokens)

    assert merge_lors(model) == 1
    for block in model.transformer.h:
        for path in PATHS:
            assert type(block.get_submodule(path)) is Conv1D
    assert list(model.state_dict()) == stock_keys
    assert torch.equal(generate(model, ids), expected_tokens)
    fresh = transformers.GPT2LMHeadModel(config()).double().eval()
    fresh.load_state_dict(model.state_dict())  # strict: stock keys, shapes
    with torch.no_grad():
        torch.testing.assert_close(fresh(ids).logits, expected, rtol=0,
                                   atol=1e-9)
    assert torch.equal(generate(fresh, ids), expected_tokens)


def test_low_rank_gpt2_trains_shared_and_private_parts():
    model = gpt2().train()
    stack = apply_lors(model.transformer, 'h', dict(rank=2, init='dense'))
    assert sum(p.numel() for p in model.parameters()) < sum(
        p.numel() for p in gpt2().parameters())
    ids = prompt()
    model(ids, labels=ids).loss.backward()
    for path in PATHS:
        assert stack.shared_linear(0, path).weight.grad.abs().sum() > 0
        for lors in stack.lors_linears(path):
            assert lors.lors_B.grad.abs().sum() > 0
