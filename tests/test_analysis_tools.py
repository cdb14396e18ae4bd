"""The analysis tools name configs that exist (they are run by hand, not in tests)."""
import importlib
import os
import os.path as osp

import pytest

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def load_tool(name: str):
    return importlib.import_module(f'tools.analysis.{name}')


def plan_config(plan: str, name: str):
    """The config of run ``name`` of plan ``plan`` with the run's --cfg-options applied,
    parsed as tools/train.py parses them."""
    import argparse

    from mmengine.config import DictAction

    from lors_mmdet.apis import load_config
    config, options = load_tool('run_experiments').PLANS[plan][name]
    parser = argparse.ArgumentParser()
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={})
    cfg = load_config(osp.join(ROOT, config))
    cfg.merge_from_dict(parser.parse_args(['--cfg-options', *options] if options else [])
                        .cfg_options)
    return cfg


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
    ('lors-adamixer static-only', {'lors_core_generator.weight', 'lors_core_generator.bias'}),
    ('lors-adamixer adaptive-only', {'out_proj.lors_B'}),
    ('lors-adamixer rank-2', set()),
    ('lors-adamixer rank-8', set()),
    ('lors-adamixer linear-init', set()),
    ('lors-adamixer shared-factors', set()),
])
def test_ablation_options_switch_off_exactly_one_branch(name, frozen):
    """Each ablation's --cfg-options build; a switched-off branch is the zero-initialised
    factor of every stage, never updated (lr 0), and nothing else."""
    from mmengine.optim import build_optim_wrapper

    from lors_mmdet.analysis import build_detector
    cfg = plan_config('ablation', name)
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


def test_private_lr_option_speeds_up_exactly_the_private_b():
    """Plan detr-private-lr: its --cfg-options give every LORS B (and nothing else)
    8x the base lr; the plain LORS run of the plan trains every parameter at the base
    lr."""
    from mmengine.optim import build_optim_wrapper

    from lors_mmdet.analysis import build_detector
    for name, mult in (('lors-dino encoder+decoder lr 1e-3 private-lr x8', 8),
                       ('lors-dino encoder+decoder lr 1e-3', 1)):
        cfg = plan_config('detr-private-lr', name)
        model = build_detector(cfg)
        names = {id(p): n for n, p in model.named_parameters()}
        lrs = {}
        for group in build_optim_wrapper(model, cfg.optim_wrapper).optimizer.param_groups:
            for p in group['params']:
                lrs[names[id(p)]] = group['lr']
        private_b = [n for n in lrs if n.endswith('.lors_B')]
        assert len(private_b) > 10
        assert [lrs[n] for n in private_b] == pytest.approx([1e-3 * mult] * len(private_b))
        others = [lr for n, lr in lrs.items() if n not in private_b]
        assert others == pytest.approx([1e-3] * len(others))


def test_which_stack_plan_shares_exactly_the_named_stacks():
    """Plan detr-which-stack: each LORS run builds the LORS stacks its name says."""
    from lors_mmdet.analysis import build_detector
    from lors_mmdet.lors import find_lors_stacks
    expected = {'dino lr 1e-3': [],
                'lors-dino encoder+decoder lr 1e-3': ['decoder.lors_layers',
                                                      'encoder.lors_layers'],
                'lors-dino decoder lr 1e-3': ['decoder.lors_layers'],
                'lors-dino encoder lr 1e-3': ['encoder.lors_layers']}
    assert sorted(load_tool('run_experiments').PLANS['detr-which-stack']) == sorted(expected)
    for name in expected:
        cfg = plan_config('detr-which-stack', name)
        stacks = sorted(path for path, _ in find_lors_stacks(build_detector(cfg)))
        assert stacks == expected[name], name
        assert cfg.optim_wrapper.optimizer.lr == 1e-3


def test_pretrained_3stage_plan_changes_only_the_backbone_start():
    """Plan adamixer-3stage-pretrained: the pair of plan adamixer-3stage with the
    backbone initialised as the 6-stage toys' (the shipped pretrained toy ResNet), and
    nothing else changed."""
    from lors_mmdet.apis import load_config
    six_stage = load_config(osp.join(ROOT, load_tool('run_experiments').ADAMIXER_6))
    for name in ('adamixer', 'lors-adamixer'):
        scratch = plan_config('adamixer-3stage', name)
        pretrained = plan_config('adamixer-3stage-pretrained', f'{name} pretrained')
        assert scratch.model.backbone.init_cfg is None
        assert pretrained.model.backbone.init_cfg == six_stage.model.backbone.init_cfg
        assert osp.isfile(osp.join(ROOT, pretrained.model.backbone.init_cfg.checkpoint))
        pretrained.model.backbone.init_cfg = None
        assert pretrained.to_dict() == scratch.to_dict()
    # the last-stage-own plan: the same pretrained pair, LORS with stages 0 and 1 sharing
    assert plan_config('adamixer-3stage-last-stage-own', 'adamixer pretrained').to_dict() == \
        plan_config('adamixer-3stage-pretrained', 'adamixer pretrained').to_dict()
    own = plan_config('adamixer-3stage-last-stage-own', 'lors-adamixer pretrained last stage own')
    assert own.model.lors.decoder.layer_groups == [2, 1]
    del own.model.lors.decoder['layer_groups']
    assert own.to_dict() == plan_config('adamixer-3stage-pretrained',
                                        'lors-adamixer pretrained').to_dict()


def test_budget_plan_stretches_the_whole_schedule():
    """Plan detr-budget: each run trains for the iterations its name says, with the lr
    step at the same fraction of the run as the toy's own schedule, and is paired with
    the stock run of its budget."""
    from lors_mmdet.analysis import build_detector
    from lors_mmdet.apis import load_config
    from lors_mmdet.lors import find_lors_stacks
    tool = load_tool('run_experiments')
    base = load_config(osp.join(ROOT, tool.DETR_STACKS['dino'][0]))
    base_step = base.param_scheduler[1].milestones[0] / base.train_cfg.max_iters
    for iters in (1000, 2000):
        for name, stacks in (('dino', []),
                             ('lors-dino encoder+decoder', ['decoder.lors_layers',
                                                            'encoder.lors_layers'])):
            cfg = plan_config('detr-budget', f'{name} {iters} iterations')
            assert cfg.train_cfg.max_iters == iters
            assert cfg.param_scheduler[1].end == iters
            assert cfg.param_scheduler[1].milestones == [int(iters * base_step)]
            assert cfg.param_scheduler[0] == base.param_scheduler[0]  # the warm-up
            assert sorted(p for p, _ in find_lors_stacks(build_detector(cfg))) == stacks
        assert tool.PAIRED_WITH[f'lors-dino encoder+decoder {iters} iterations'] == \
            f'dino {iters} iterations'


def test_last_layer_plan_gives_the_last_decoder_layer_its_own_weights_or_more_rank():
    """Plan detr-last-layer: the LORS decoder (no encoder stack) with its last layer in a
    group of its own, or with 1, 2, 3 rank-16 terms in layers 0, 1, 2."""
    from lors_mmdet.analysis import build_detector
    from lors_mmdet.lors import find_lors_stacks
    tool = load_tool('run_experiments')
    assert set(tool.PLANS['detr-last-layer']) >= {'dino lr 1e-3', 'lors-dino decoder lr 1e-3'}
    groups = {}
    for name in ('lors-dino decoder lr 1e-3', 'lors-dino decoder lr 1e-3 last layer own',
                 'lors-dino decoder lr 1e-3 terms 1-2-3'):
        cfg = plan_config('detr-last-layer', name)
        assert cfg.optim_wrapper.optimizer.lr == 1e-3
        model = build_detector(cfg)
        (path, stack), = find_lors_stacks(model)
        assert path == 'decoder.lors_layers'
        groups[name] = stack.layer_groups
        ranks = [layer.ffn.layers[0][0].lors_A.shape[0] for layer in model.decoder.layers]
        assert ranks == ([16, 32, 48] if name.endswith('terms 1-2-3') else [16, 16, 16])
    assert groups['lors-dino decoder lr 1e-3'] == [[0, 1, 2]]
    assert groups['lors-dino decoder lr 1e-3 last layer own'] == [[0, 1], [2]]
    for variant in ('last layer own', 'terms 1-2-3'):  # each also against the plain decoder
        assert tool.PAIRED_WITH[f'lors-dino decoder lr 1e-3 {variant}'] == (
            'dino lr 1e-3', 'lors-dino decoder lr 1e-3')


def test_last_layer_plan_of_both_stacks_changes_only_the_decoder_groups():
    from lors_mmdet.analysis import build_detector
    from lors_mmdet.lors import find_lors_stacks
    stacks = {}
    for name in ('lors-dino encoder+decoder lr 1e-3',
                 'lors-dino encoder+decoder lr 1e-3 last layer own'):
        cfg = plan_config('detr-last-layer-encoder+decoder', name)
        assert cfg.optim_wrapper.optimizer.lr == 1e-3
        stacks[name] = {path: stack.layer_groups
                        for path, stack in find_lors_stacks(build_detector(cfg))}
    assert stacks['lors-dino encoder+decoder lr 1e-3'] == {
        'encoder.lors_layers': [[0, 1]], 'decoder.lors_layers': [[0, 1, 2]]}
    assert stacks['lors-dino encoder+decoder lr 1e-3 last layer own'] == {
        'encoder.lors_layers': [[0, 1]], 'decoder.lors_layers': [[0, 1], [2]]}


def test_every_pairing_names_runs_of_one_plan():
    tool = load_tool('run_experiments')
    for name, against in tool.PAIRED_WITH.items():
        plans = [plan for plan, runs in tool.PLANS.items() if name in runs]
        assert plans, name
        for other in (against, ) if isinstance(against, str) else against:
            assert any(other in tool.PLANS[plan] for plan in plans), (name, other)


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


def test_report_only_writes_the_table_between_the_doc_markers(tmp_path, finished_run, run_tool):
    """``--report-only --doc PATH`` puts the very table of results.md between
    ``<!-- experiments:detr-stacks:start/end -->`` and leaves the rest."""
    work_dir = tmp_path / 'runs'
    finished_run(work_dir, 'detr-stacks', 'dino', 0, [0.25, 0.5])
    finished_run(work_dir, 'detr-stacks', 'lors-dino decoder', 0, [0.125, 0.375])
    doc = tmp_path / 'log.md'
    doc.write_text('# Log\n\nbefore\n<!-- experiments:detr-stacks:start -->\nold table\n'
                   '<!-- experiments:detr-stacks:end -->\nafter\n')
    result = run_tool('run_experiments', '--plan', 'detr-stacks', '--report-only',
                      '--work-dir', str(work_dir), '--out', str(tmp_path / 'out'),
                      '--doc', str(doc))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'out' / 'detr-stacks' / 'results.md').read_text().strip()
    assert '| dino | 1 | 0.500 | 0.700 | 0.600 | 0.500 | 1.5 |' in table
    assert '| lors-dino decoder | 1 | 0.375 |' in table
    assert doc.read_text() == (
        '# Log\n\nbefore\n<!-- experiments:detr-stacks:start -->\n' + table +
        '\n<!-- experiments:detr-stacks:end -->\nafter\n')


def test_report_keeps_each_finished_run_so_that_it_outlives_its_work_dir(tmp_path, finished_run,
                                                                          run_tool):
    """A session's work dirs are lost with its machine: the report keeps each finished
    run under --out, reports from there alone the next time, and pairs the kept runs
    with a newly finished one."""
    import json
    import shutil
    first, second = tmp_path / 'first', tmp_path / 'second'
    finished_run(first, 'detr-stacks', 'dino', 0, [0.25, 0.5])
    finished_run(first, 'detr-stacks', 'lors-dino decoder', 0, [0.125, 0.38])
    finished_run(first, 'detr-stacks', 'dino', 1, [0.3, 0.6])
    out = tmp_path / 'out'
    arguments = ('--plan', 'detr-stacks', '--report-only', '--out', str(out))
    result = run_tool('run_experiments', *arguments, '--work-dir', str(first))
    assert result.returncode == 0, result.stderr
    kept = json.loads((out / 'detr-stacks' / 'runs' / 'dino' / 'seed1.json').read_text())
    assert kept['metrics']['200']['coco/bbox_mAP_75'] == pytest.approx(0.7)
    assert kept['losses'] == {'100': 10.0, '200': 5.0}
    shutil.rmtree(first)
    finished_run(second, 'detr-stacks', 'lors-dino decoder', 1, [0.2, 0.4])
    result = run_tool('run_experiments', *arguments, '--work-dir', str(second))
    assert result.returncode == 0, result.stderr
    table = (out / 'detr-stacks' / 'results.md').read_text()
    assert '| dino | 2 | 0.550 ± 0.071 |' in table
    assert '| lors-dino decoder | 2 | 0.390 ± 0.014 |' in table
    # paired at iteration 200 over both seeds: (0.38 - 0.5 + 0.4 - 0.6) / 2
    assert '| lors-dino decoder | dino | 200 | 2 | 0.390 ± 0.014 | 0.550 ± 0.071 | -0.160 |' in table


def test_runs_of_two_commits_are_never_paired(tmp_path, finished_run, run_tool):
    """Runs of one report are paired, so all of them come from one commit: kept runs of
    any run name (not only those --only selects), finished run dirs and the checkout
    that would train more; a run without a commit is refused too."""
    experiments = load_tool('run_experiments')
    a, b = 'a' * 40, 'b' * 40
    kept = ('out/runs/dino/seed0.json', dict(commit=a))
    experiments.check_one_commit([kept], a)
    with pytest.raises(SystemExit, match=f'seed0.json was trained at commit {a}, this '
                       f'checkout is at {b}: train from a worktree of {a}'):
        experiments.check_one_commit([kept], b)
    with pytest.raises(SystemExit, match=f'work/dino/seed1/finished.json was trained at '
                       f'commit {b}, out/runs/dino/seed0.json at {a}'):
        experiments.check_one_commit([kept, ('work/dino/seed1/finished.json',
                                             dict(commit=b))])
    with pytest.raises(SystemExit, match='seed2/finished.json records no commit'):
        experiments.check_one_commit([kept, ('work/dino/seed2/finished.json', {})])
    # end to end: a run kept at commit a under another name than the one --only selects
    # still refuses a report of a work dir at commit b, and nothing is kept
    finished_run(tmp_path / 'first', 'detr-stacks', 'dino', 0, [0.5], commit=a)
    out = tmp_path / 'out'
    result = run_tool('run_experiments', '--plan', 'detr-stacks', '--report-only',
                      '--out', str(out), '--work-dir', str(tmp_path / 'first'))
    assert result.returncode == 0, result.stderr
    finished_run(tmp_path / 'second', 'detr-stacks', 'lors-dino decoder', 0, [0.4],
                 commit=b)
    result = run_tool('run_experiments', '--plan', 'detr-stacks', '--report-only',
                      '--out', str(out), '--work-dir', str(tmp_path / 'second'),
                      '--only', 'lors-dino decoder')
    assert result.returncode != 0
    assert f'was trained at commit {b}' in result.stderr
    assert not (out / 'detr-stacks' / 'runs' / 'lors-dino_decoder').exists()


def test_a_kept_run_is_never_overwritten_by_other_results(tmp_path, finished_run):
    """A run dir whose results differ from the kept record of the same run and seed
    (e.g. its logs pruned) is refused naming both files; the same results are kept once."""
    experiments = load_tool('run_experiments')
    out = str(tmp_path / 'out')
    run = str(finished_run(tmp_path / 'work', 'detr-stacks', 'dino', 0, [0.25, 0.5]))
    assert run == str(tmp_path / 'work' / 'dino' / 'seed0')
    spec = experiments.PLANS['detr-stacks']['dino']
    experiments.keep_record(out, 'dino', 0, run, spec)
    path = experiments.record_path(out, 'dino', 0)
    before = open(path).read()
    experiments.keep_record(out, 'dino', 0, run, spec)  # the same results: nothing changes
    assert open(path).read() == before
    import shutil
    shutil.rmtree(osp.join(run, '20261130_000000'))  # the logged scalars are gone
    with pytest.raises(SystemExit, match=f'{run} and the kept {path} are both dino seed 0'):
        experiments.keep_record(out, 'dino', 0, run, spec)
    assert open(path).read() == before
    assert experiments.read_record(path)['metrics'][200]['coco/bbox_mAP'] == 0.5


def test_a_damaged_or_foreign_kept_record_is_refused_by_name(tmp_path, finished_run):
    import json
    experiments = load_tool('run_experiments')
    out = str(tmp_path)
    run = str(finished_run(tmp_path / 'work', 'detr-stacks', 'dino', 3, [0.5]))
    plans = experiments.PLANS['detr-stacks']
    # a run dir of another variant than the plan's entry is not kept
    with pytest.raises(SystemExit, match=r"seed3/finished\.json was trained with .* the "
                       r"plan names 'lors-dino decoder'"):
        experiments.keep_record(out, 'lors-dino decoder', 3, run, plans['lors-dino decoder'])
    assert not experiments.read_kept(out)
    experiments.keep_record(out, 'dino', 3, run, plans['dino'])
    path = experiments.record_path(out, 'dino', 3)
    record = json.load(open(path))
    experiments.check_kept_match_plans(plans, experiments.read_kept(out), out)
    # a record of another variant under this run's name
    json.dump(dict(record, options=['model.lors.decoder.rank=4']), open(path, 'w'))
    with pytest.raises(SystemExit, match=r"seed3\.json was trained with .*rank=4.*"
                       r"the plan names 'dino'"):
        experiments.check_kept_match_plans(plans, experiments.read_kept(out), out)
    del record['seconds']
    json.dump(record, open(path, 'w'))
    with pytest.raises(SystemExit, match=r'seed3\.json: not a run record .*no seconds'):
        experiments.read_kept(out)
    json.dump([1, 2], open(path, 'w'))
    with pytest.raises(SystemExit, match=r'seed3\.json: not a run record .*JSON object'):
        experiments.read_kept(out)
    os.remove(path)
    (tmp_path / 'runs' / 'dino' / 'seed_3.json').write_text('{}')
    with pytest.raises(SystemExit, match=r'seed_3\.json: a run is named seed<integer>\.json'):
        experiments.read_kept(out)


def test_a_damaged_finished_run_is_refused_by_name(tmp_path, finished_run, run_tool):
    """A work dir's run whose ``finished.json`` is cut short, or whose folder is not
    ``seed<integer>``, stops the report naming the file or folder."""
    work_dir = tmp_path / 'work'
    finished = finished_run(work_dir, 'detr-stacks', 'dino', 0, [0.5]) / 'finished.json'
    finished.write_text(finished.read_text()[:20])
    arguments = ('--plan', 'detr-stacks', '--report-only', '--out', str(tmp_path / 'out'),
                 '--work-dir', str(work_dir))
    result = run_tool('run_experiments', *arguments)
    assert result.returncode != 0
    assert f'{finished}: not a run record of run_experiments.py (not JSON)' in result.stderr
    finished.unlink()
    finished_run(work_dir, 'detr-stacks', 'dino', 1, [0.5]).rename(work_dir / 'dino' / 'seed1b')
    result = run_tool('run_experiments', *arguments)
    assert result.returncode != 0
    assert f"{work_dir / 'dino' / 'seed1b'}: a run is named seed<integer>" in result.stderr


def test_a_finished_run_is_kept_as_soon_as_it_ends(tmp_path, finished_run):
    """Each run's record is kept when that run ends, so another run's failure (or a
    session stopped later) loses none of the finished ones; the failure still raises.
    (The toy trainings take minutes: ``train_one`` here leaves a run dir as
    ``tools/train.py`` would, or fails as it would.)"""
    import subprocess
    experiments = load_tool('run_experiments')
    out = str(tmp_path / 'out')

    kept_before = {}

    def train_one(name, config, options, seed, directory):
        kept_before[name] = sorted(experiments.read_kept(out))
        if name == 'lors-dino encoder+decoder':
            raise subprocess.CalledProcessError(1, ['tools/train.py', config])
        finished_run(tmp_path / 'work', 'detr-stacks', name, seed, [0.5])

    names = ('dino', 'lors-dino encoder+decoder', 'lors-dino decoder')
    todo = [(name, *experiments.PLANS['detr-stacks'][name], 0,
             experiments.run_dir(str(tmp_path / 'work'), name, 0)) for name in names]
    with pytest.raises(subprocess.CalledProcessError):
        experiments.train_all(todo, out, 1, train_one)
    # one run at a time: each saw the records of the runs finished before it
    assert kept_before == {'dino': [], 'lors-dino encoder+decoder': ['dino'],
                           'lors-dino decoder': ['dino']}
    assert sorted(experiments.read_kept(out)) == ['dino', 'lors-dino_decoder']


def test_a_kept_run_is_not_trained_again(tmp_path, finished_run, run_tool):
    """A run kept in an earlier session, its work dir gone, is not trained again."""
    import subprocess
    commit = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                            text=True, check=True).stdout.strip()
    changed = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--',
                              '.', ':(exclude)docs'], cwd=ROOT, capture_output=True,
                             text=True, check=True).stdout.strip()
    if changed:
        pytest.skip('training is refused in a checkout with changes')
    out = tmp_path / 'out'
    for name in ('dino', 'lors-dino decoder'):
        finished_run(tmp_path / 'earlier', 'detr-stacks', name, 0, [0.5], commit=commit)
    arguments = ('--plan', 'detr-stacks', '--only', 'dino', 'lors-dino decoder',
                 '--out', str(out))
    result = run_tool('run_experiments', *arguments, '--report-only',
                      '--work-dir', str(tmp_path / 'earlier'))
    assert result.returncode == 0, result.stderr
    result = run_tool('run_experiments', *arguments, '--seeds', '0',
                      '--work-dir', str(tmp_path / 'new'))
    assert result.returncode == 0, result.stderr
    assert 'tools/train.py' not in result.stdout
    assert not (tmp_path / 'new').exists()
    assert '| dino | 1 | 0.500 |' in (out / 'detr-stacks' / 'results.md').read_text()


def test_report_only_refuses_a_doc_without_the_markers(tmp_path, run_tool):
    doc = tmp_path / 'log.md'
    text = '# Log\n<!-- experiments:families:start -->\n<!-- experiments:families:end -->\n'
    doc.write_text(text)
    result = run_tool('run_experiments', '--plan', 'detr-stacks', '--report-only',
                      '--work-dir', str(tmp_path / 'runs'),
                      '--out', str(tmp_path / 'out'), '--doc', str(doc))
    assert result.returncode != 0
    assert str(doc) in result.stderr
    assert '<!-- experiments:detr-stacks:start -->' in result.stderr
    assert doc.read_text() == text
    assert not (tmp_path / 'out').exists()  # refused before anything ran


def test_write_generated_replaces_only_between_its_markers(tmp_path):
    from tools.upkeep.docs_tables import write_generated
    doc = tmp_path / 'page.md'
    doc.write_text('a\n<!-- t:start -->\nold\n<!-- t:end -->\nb\n'
                   '<!-- u:start -->\nkeep\n<!-- u:end -->\n')
    write_generated(str(doc), 't', 'new 1\nnew 2')
    assert doc.read_text() == ('a\n<!-- t:start -->\nnew 1\nnew 2\n<!-- t:end -->\nb\n'
                               '<!-- u:start -->\nkeep\n<!-- u:end -->\n')
    with pytest.raises(ValueError, match=r'page\.md: .*<!-- v:start -->'):
        write_generated(str(doc), 'v', 'x')


def test_compress_experiments_report(tmp_path, finished_run, write_run, run_tool):
    """compress_experiments.py --report-only: AP after compression (tools/test.py's
    json), after the fine-tune, the stock and from-scratch runs of the same seed, and
    the transformer fraction compress.py printed, into results.md and the doc."""
    import json
    stock_dir, work_dir = tmp_path / 'stock', tmp_path / 'compress'
    finished_run(stock_dir, 'detr-stacks', 'dino', 0, [0.25, 0.5])
    finished_run(stock_dir, 'detr-stacks', 'lors-dino decoder', 0, [0.125, 0.375])
    os.remove(finished_run(stock_dir, 'detr-stacks', 'lors-dino encoder+decoder', 0, [0.25]) /
              'finished.json')
    for name in ('decoder r16', 'encoder+decoder r16'):
        variant = work_dir / name.replace(' ', '_') / 'seed0'
        write_run(variant / 'finetune', name, [0.4, 0.45])
        (variant / 'compress.log').write_text(
            'parameters (each tensor once):\n'
            '                    before        after after/before\n'
            '  decoder        2,000,000      500,000        25.0%\n'
            '  transformer    4,000,000    2,500,000        62.5%\n')
        (variant / 'test' / '20261130_000000').mkdir(parents=True)
        (variant / 'test' / '20261130_000000' / 'metrics.json').write_text(
            json.dumps({'coco/bbox_mAP': 0.125}))
    doc = tmp_path / 'log.md'
    doc.write_text('x\n<!-- experiments:compress:start -->\n<!-- experiments:compress:end -->\n')
    result = run_tool('compress_experiments', '--seeds', '0', '--report-only',
                      '--stock-work-dir', str(stock_dir), '--work-dir', str(work_dir),
                      '--out', str(tmp_path / 'out'), '--doc', str(doc))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'out' / 'results.md').read_text().strip()
    assert '| decoder r16 | 0 | 62.5% | 0.125 | 0.450 | 0.500 | -0.050 | 0.375 |' in table
    # the from-scratch run that has not finished is left out, not read half way
    assert '| encoder+decoder r16 | 0 | 62.5% | 0.125 | 0.450 | 0.500 | -0.050 | - |' in table
    assert 'encoder+decoder r4' not in table  # variants without runs are left out
    assert table in doc.read_text()
    assert (tmp_path / 'out' / 'ap_vs_params.png').exists()


def test_run_experiments_refuses_fewer_than_one_thread(monkeypatch):
    experiments = load_tool('run_experiments')
    monkeypatch.setattr('sys.argv', ['run_experiments.py', '--plan', 'sparse-rcnn',
                                     '--threads', '0', '--work-dir', '/nonexistent'])
    with pytest.raises(SystemExit, match='--threads must be at least 1, got 0'):
        experiments.main()


def test_compress_experiments_budget_study_pairs_by_seed(tmp_path, finished_run, write_run,
                                                        run_tool):
    """--study budget: each variant against the one it names, paired by seed: the
    mean differences right after compression and after the fine-tune."""
    import json
    stock_dir, work_dir = tmp_path / 'stock', tmp_path / 'compress'
    aps = {'budget 0.5': ([0.25, 0.5], [0.125, 0.25]),
           'budget 0.5 calibrated': ([0.5, 0.75], [0.25, 0.375])}
    for seed in (0, 1):
        finished_run(stock_dir, 'detr-stacks', 'dino', seed, [0.25, 0.5])
        for name, (compressed, finetuned) in aps.items():
            variant = work_dir / name.replace(' ', '_') / f'seed{seed}'
            write_run(variant / 'finetune', name, [0.1, finetuned[seed]])
            (variant / 'compress.log').write_text(
                '  transformer    4,000,000    2,000,000        50.0%\n')
            (variant / 'test' / '1').mkdir(parents=True)
            (variant / 'test' / '1' / 'metrics.json').write_text(
                json.dumps({'coco/bbox_mAP': compressed[seed]}))
    result = run_tool('compress_experiments', '--study', 'budget', '--seeds', '0', '1',
                      '--report-only', '--stock-work-dir', str(stock_dir),
                      '--work-dir', str(work_dir), '--out', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'out' / 'results.md').read_text()
    # differences +0.25 and +0.125 for both seeds: no spread, a zero-width interval
    assert ('| budget 0.5 calibrated | budget 0.5 | 2 | +0.250 [+0.250, +0.250] | '
            '+0.125 [+0.125, +0.125] |') in table


WAITER = '''
import subprocess, sys
from tools.analysis.run_experiments import wait_counting_seconds
child = subprocess.Popen(['sleep', '60'])
print('waiting', flush=True)
wait_counting_seconds(child, sys.argv[1], before=100.0, every=0.2)
'''


def test_a_killed_experiment_keeps_the_seconds_its_run_trained(tmp_path):
    """run_experiments.py killed without a chance to clean up (SIGKILL, as a session's end
    may) still leaves the run's seconds so far, so a resumed run's time adds up."""
    import os
    import signal
    import subprocess
    import sys
    import time
    seconds_file = str(tmp_path / 'seconds_before_resume.txt')
    waiter = subprocess.Popen([sys.executable, '-c', WAITER, seconds_file], cwd=ROOT,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
    try:
        assert waiter.stdout.readline().strip() == 'waiting'
        time.sleep(1.5)
    finally:
        os.killpg(waiter.pid, signal.SIGKILL)
        waiter.wait()
    with open(seconds_file) as f:
        assert 100.7 <= float(f.read()) <= 103  # 1.5 s waited, recorded every 0.2 s


def test_training_runs_import_the_checkout_they_record(tmp_path, monkeypatch):
    """A worktree's runs must train its own ``lors_mmdet``, not the package another
    checkout installed (here: one put first on PYTHONPATH)."""
    import subprocess
    import sys
    other = tmp_path / 'other_checkout'
    (other / 'lors_mmdet').mkdir(parents=True)
    (other / 'lors_mmdet' / '__init__.py').write_text('')
    monkeypatch.setenv('PYTHONPATH', str(other))
    experiments = load_tool('run_experiments')
    env = experiments.run_env(1)
    assert env['OMP_NUM_THREADS'] == '1'
    found = subprocess.run([sys.executable, '-c', 'import lors_mmdet; print(lors_mmdet.__file__)'],
                           cwd=tmp_path, env=env, capture_output=True, text=True, check=True)
    assert found.stdout.strip() == osp.join(ROOT, 'lors_mmdet', '__init__.py')
