"""The analysis tools name configs that exist (they are run by hand, not in tests)."""
import importlib.util
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name: str):
    spec = importlib.util.spec_from_file_location(
        name, osp.join(ROOT, 'tools', 'analysis', f'{name}.py'))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_benchmark_configs_exist():
    benchmark = load_tool('benchmark')
    for device, pairs in benchmark.PAIRS.items():
        for family, configs in pairs.items():
            for config in configs:
                if not config.startswith('mmdet::'):
                    assert osp.isfile(osp.join(ROOT, config)), (device, family, config)


def test_experiment_configs_exist():
    experiments = load_tool('run_experiments')
    for plan in experiments.PLANS.values():
        for name, (config, _) in plan.items():
            assert osp.isfile(osp.join(ROOT, config)), (name, config)


@pytest.mark.parametrize('name,frozen', [
    ('lors-adamixer', set()),
    ('lors-adamixer static-only', {'core_generator.weight', 'core_generator.bias'}),
    ('lors-adamixer adaptive-only', {'out_proj.lors_B'}),
    ('lors-adamixer rank-2', set()),
])
def test_ablation_options_switch_off_exactly_one_branch(name, frozen):
    """Each ablation's --cfg-options build; a switched-off branch is the zero-initialised
    factor of every stage, never updated (lr 0), and nothing else."""
    import argparse

    from mmengine.config import DictAction
    from mmengine.optim import build_optim_wrapper

    from lors_mmdet.analysis import build_detector, load_config
    experiments = load_tool('run_experiments')
    config, options = experiments.PLANS['ablation'][name]
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    cfg = load_config(osp.join(ROOT, config))
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *options] if options else [])
                        .cfg_options)
    model = build_detector(cfg)
    names = {id(p): n for n, p in model.named_parameters()}
    optimizer = build_optim_wrapper(model, cfg.optim_wrapper).optimizer
    never_updated = [names[id(p)] for group in optimizer.param_groups if group['lr'] == 0
                     for p in group['params']]
    num_stages = cfg.model.roi_head.num_stages
    assert len(never_updated) == len(frozen) * num_stages
    assert {'.'.join(n.split('.')[-2:]) for n in never_updated} == frozen
    for n in never_updated:  # zero at the start, so that branch adds exactly nothing
        assert not dict(model.named_parameters())[n].any(), n


def test_merged_for_deployment_equals_the_lors_model():
    """Folding every LorsLinear into nn.Linear keeps the function of the model."""
    import torch
    import torch.nn as nn
    from lors_mmdet.lors import LorsLinear, LorsLinearStack
    benchmark = load_tool('benchmark')
    torch.manual_seed(0)
    model = nn.Sequential()
    model.stack = LorsLinearStack(8, 8, num_layers=3, rank=2)
    for layer in model.stack.layers:
        nn.init.normal_(layer.lors_B)
    x = torch.randn(4, 8)
    expected = [layer(x) for layer in model.stack.layers]
    merged = benchmark.merged_for_deployment(model)
    assert not any(isinstance(m, LorsLinear) for m in merged.modules())
    for layer, out in zip(merged.stack.layers, expected):
        assert isinstance(layer, nn.Linear)
        torch.testing.assert_close(layer(x), out, atol=1e-5, rtol=1e-5)


def test_analysis_loads_mmdet_configs_by_their_base_name():
    """benchmark.py --device cuda names mmdet's own configs as 'mmdet::...'."""
    from lors_mmdet.analysis import load_config
    cfg = load_config('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py')
    assert cfg.model.type == 'DINO'
    with pytest.raises(FileNotFoundError, match='mmdet::dino/no-such.py'):
        load_config('mmdet::dino/no-such.py')


def test_experiment_report_places_validations_at_their_iteration(tmp_path):
    """mmengine logs an iteration-based validation with step 0 (the epoch):
    the report must put it at the training iteration it followed."""
    import json
    experiments = load_tool('run_experiments')
    scalars = tmp_path / '20261128_000000' / 'vis_data'
    scalars.mkdir(parents=True)
    records = [dict(iter=50, loss=9.0), dict(iter=100, loss=7.0),
               {'coco/bbox_mAP': 0.1, 'step': 0},
               dict(iter=150, loss=6.0), dict(iter=200, loss=5.0),
               {'coco/bbox_mAP': 0.3, 'step': 0}]
    (scalars / 'scalars.json').write_text(
        '\n'.join(json.dumps(r) for r in records) + '\n')
    losses, metrics = experiments.read_scalars(str(tmp_path))
    assert losses == {50: 9.0, 100: 7.0, 150: 6.0, 200: 5.0}
    assert {k: v['coco/bbox_mAP'] for k, v in metrics.items()} == {100: 0.1, 200: 0.3}
