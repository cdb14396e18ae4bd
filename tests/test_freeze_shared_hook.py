"""FreezeLorsSharedHook in a real mmengine training loop: the shared weights of a
LORS stack stay exactly as they were for the first iterations (weight decay and
gradient clipping included) while the private residuals learn, then train; and
the fine-tune schedule tools/compress.py writes with --freeze-shared."""
import pytest
import torch
from mmengine.config import Config
from mmengine.hooks import Hook
from mmengine.model import BaseModel
from mmengine.runner import Runner
from torch import nn

import lors_mmdet  # noqa: F401  (registers the hook)
from lors_mmdet.apis.compression import finetune_schedule
from lors_mmdet.engine import FreezeLorsSharedHook
from lors_mmdet.lors import apply_lors, find_lors_stacks


class Stack(BaseModel):
    """Three 8 -> 8 layers made one LORS stack (rank 2), a regression loss."""

    def __init__(self) -> None:
        super().__init__()
        self.layers = nn.ModuleList(nn.Sequential(nn.Linear(8, 8), nn.Tanh())
                                    for _ in range(3))
        apply_lors(self, 'layers', dict(rank=2))

    def forward(self, inputs, targets, mode='loss'):
        x = inputs
        for layer in self.layers:
            x = layer(x)
        return dict(loss=((x - targets) ** 2).mean())


class Record(Hook):
    """After every step (after the freeze hook): the shared and private tensors and
    the optimizer's state of the shared ones."""

    priority = 'LOWEST'

    def __init__(self) -> None:
        self.seen = []

    def after_train_iter(self, runner, batch_idx, data_batch=None, outputs=None):
        (_, stack), = find_lors_stacks(runner.model)
        private = [p.detach().clone() for n, p in runner.model.named_parameters()
                   if 'lors_' in n]
        state = runner.optim_wrapper.optimizer.state
        adam = [(int(state[p]['step']), state[p]['exp_avg'].abs().max().item())
                for p in stack.parameters()]
        self.seen.append(([p.detach().clone() for p in stack.parameters()], private,
                          adam))


def batches():
    gen = torch.Generator().manual_seed(0)
    return [dict(inputs=torch.randn(4, 8, generator=gen),
                 targets=torch.randn(4, 8, generator=gen)) for _ in range(8)]


@pytest.mark.parametrize('freeze', [dict(iters=3), dict(fraction=0.5)])
def test_shared_weights_stay_fixed_then_train(tmp_path, freeze):
    torch.manual_seed(0)
    model = Stack()
    (_, stack), = find_lors_stacks(model)
    start = [p.detach().clone() for p in stack.parameters()]
    record = Record()
    runner = Runner(
        model=model, work_dir=str(tmp_path),
        train_dataloader=dict(dataset=batches(), sampler=dict(type='DefaultSampler',
                                                               shuffle=False),
                              batch_size=1, collate_fn=dict(type='default_collate')),
        train_cfg=dict(by_epoch=False, max_iters=6),
        optim_wrapper=dict(optimizer=dict(type='AdamW', lr=0.05, weight_decay=0.5),
                           clip_grad=dict(max_norm=0.1)),
        custom_hooks=[dict(type='FreezeLorsSharedHook', **freeze), record],
        default_hooks=dict(checkpoint=None, logger=None), default_scope='mmdet')
    # the default collate adds a batch axis: take it off again
    runner.model.forward = (lambda inputs, targets, mode='loss', f=model.forward:
                            f(inputs[0], targets[0], mode))
    runner.train()
    assert len(record.seen) == 6
    for step, (shared, private, adam) in enumerate(record.seen):
        same = all(torch.equal(a, b) for a, b in zip(shared, start))
        assert same == (step < 3), step
        if step < 3:  # zero gradients: the moments saw nothing
            assert all(moment == 0 for _, moment in adam), step
        else:  # released at step 3: the optimizer state of the shared weights restarted
            assert all(count == step - 2 and moment > 0 for count, moment in adam), step
    assert not torch.equal(record.seen[0][1][0], record.seen[2][1][0])  # private learn


def test_hook_arguments_are_checked():
    with pytest.raises(ValueError, match='exactly one of iters and fraction'):
        FreezeLorsSharedHook()
    with pytest.raises(ValueError, match='iters must be a positive int'):
        FreezeLorsSharedHook(iters=0)
    with pytest.raises(ValueError, match=r'fraction must be in \(0, 1\)'):
        FreezeLorsSharedHook(fraction=1.0)


def test_finetune_schedule_appends_the_hook_to_the_configs_own():
    cfg = Config(dict(train_cfg=dict(type='IterBasedTrainLoop', max_iters=500),
                      optim_wrapper=dict(optimizer=dict(type='AdamW', lr=1e-3)),
                      custom_hooks=[dict(type='RNGStateHook')]))
    overrides, header = finetune_schedule(cfg, 0.2, 0.1, freeze_shared=0.5)
    assert overrides['custom_hooks'] == [dict(type='RNGStateHook'),
                                         dict(type='FreezeLorsSharedHook', fraction=0.5)]
    assert any('held fixed for the first 50% of its iterations' in line
               for line in header)
    assert 'custom_hooks' not in finetune_schedule(cfg, 0.2, 0.1)[0]
    epochs = Config(dict(train_cfg=dict(max_epochs=12),
                         optim_wrapper=dict(optimizer=dict(lr=1e-4))))
    assert finetune_schedule(epochs, 0.2, 0.1, 0.25)[0]['custom_hooks'] == [
        dict(type='FreezeLorsSharedHook', fraction=0.25)]
    with pytest.raises(ValueError, match=r'--freeze-shared\) must be a fraction'):
        finetune_schedule(cfg, 0.2, 0.1, 1.5)
