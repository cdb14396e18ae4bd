"""The accuracy study's statistics and diagnostics (lors_mmdet/diagnostics.py) and the
experiment tool's pairing, resuming and commit checks."""
import json
import os.path as osp
import subprocess

import pytest
import torch

from lors_mmdet.diagnostics import (decoder_parameter_group, grouped_norms,
                                    paired_difference, private_residual_sizes,
                                    update_norms)

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))


def test_paired_difference_matches_a_paired_t_test():
    """The interval is the one whose ends a paired t-test (scipy) puts at p = 0.05."""
    from scipy import stats
    treated = [0.50, 0.52, 0.49, 0.55, 0.51, 0.47]
    baseline = [0.52, 0.53, 0.52, 0.56, 0.50, 0.50]
    d = paired_difference(treated, baseline)
    assert d['n'] == 6
    assert d['mean'] == pytest.approx(sum(treated) / 6 - sum(baseline) / 6)
    for end in (d['low'], d['high']):  # shifting by an end makes the test borderline
        shifted = [t - end for t in treated]
        assert stats.ttest_rel(shifted, baseline).pvalue == pytest.approx(0.05, abs=1e-9)
    assert d['low'] < d['mean'] < d['high']


def test_paired_difference_refuses_unpaired_values():
    with pytest.raises(ValueError, match='same positive number'):
        paired_difference([0.5, 0.6], [0.5])
    assert paired_difference([0.4], [0.5])['low'] == pytest.approx(-0.1)


def test_parameter_groups_and_norms():
    assert decoder_parameter_group(
        'lors_bbox_head.shared.0.adaptive_mixing.parameter_generator.generator.weight'
    ) == 'shared mixing'
    assert decoder_parameter_group(
        'lors_bbox_head.shared.0.ffn.layers.1.weight') == 'shared other'
    assert decoder_parameter_group('bbox_head.3.adaptive_mixing.out_proj.lors_B') == \
        's3 mixing'
    assert decoder_parameter_group('bbox_head.0.ffn.layers.1.weight') == 's0 other'
    tensors = {'bbox_head.0.adaptive_mixing.a': torch.full((2, 2), 1.0),
               'bbox_head.0.adaptive_mixing.b': torch.full((4,), 2.0),
               'bbox_head.1.fc_cls.weight': torch.tensor([3.0, 4.0])}
    norms = grouped_norms(tensors)
    assert norms == {'s0 mixing': pytest.approx((4 + 16) ** 0.5), 's1 other': 5.0}
    after = {k: v * 3 for k, v in tensors.items()}
    change = update_norms(tensors, after)
    assert change['s1 other'] == dict(norm=pytest.approx(10.0), relative=pytest.approx(2.0))
    with pytest.raises(ValueError, match='different decoder tensors'):
        update_norms(tensors, {'x': torch.zeros(1)})


def _toy_lors_decoder():
    from lors_mmdet.analysis import build_detector
    torch.manual_seed(0)
    model = build_detector(osp.join(
        ROOT, 'configs/lors_adamixer/lors-adamixer-6stage_r18-tiny_1xb16-toy_synthetic.py'))
    return model.roi_head


def test_private_residual_sizes_are_the_materialised_matrices():
    """Zero at init (the published init zeroes the core generators and B); after a
    perturbation, the ratio computed from the full matrices the stage would use."""
    decoder = _toy_lors_decoder()
    with torch.no_grad():
        decoder.lors_bbox_head.shared_generator(
            0, 'adaptive_mixing.parameter_generator').generator.weight.normal_(0, 0.1)
    queries = [torch.randn(2, 5, 64) for _ in decoder.bbox_head]
    sizes = private_residual_sizes(decoder, queries)
    assert set(sizes) == {f's{i}' for i in range(6)}
    assert all(v == 0 for s in sizes.values() for v in s.values())

    head = decoder.bbox_head[2].adaptive_mixing
    with torch.no_grad():
        head.parameter_generator.lors_core_generator.weight.normal_(0, 0.5)
        head.out_proj.lors_B.normal_(0, 0.5)
    sizes = private_residual_sizes(decoder, queries)
    assert sizes['s1'] == dict(static_out_proj=0.0, M=0.0, S=0.0)
    static = head.out_proj.lors_B @ head.out_proj.lors_A
    assert sizes['s2']['static_out_proj'] == pytest.approx(
        float(static.norm() / head.out_proj.shared.weight.norm()), rel=1e-5)
    # the stage's channel-mixing matrix, built from its generators directly
    with torch.no_grad():
        mats = head.parameter_generator.matrices(queries[2])
        full, shared = mats.materialise(0), mats.shared[0]
    ratio = ((full - shared).flatten(-2).norm(dim=-1) / shared.flatten(-2).norm(dim=-1))
    assert sizes['s2']['M'] == pytest.approx(float(ratio.mean()), rel=1e-5)
    assert sizes['s2']['M'] > 0 and sizes['s2']['S'] > 0


def test_report_pairs_the_runs_by_seed(tmp_path, finished_run, run_tool):
    """Only seeds finished on both sides are paired, at every validated iteration."""
    work_dir = tmp_path / 'runs'
    plain = {0: [0.30, 0.50], 1: [0.20, 0.40], 2: [0.25, 0.45], 3: [0.1, 0.1]}
    lors = {0: [0.28, 0.49], 1: [0.21, 0.37], 2: [0.22, 0.46]}
    for seed, maps in plain.items():
        finished_run(work_dir, 'adamixer-6stage', 'adamixer 6-stage', seed, maps, every=200)
    for seed, maps in lors.items():
        finished_run(work_dir, 'adamixer-6stage', 'lors-adamixer 6-stage', seed, maps,
                     every=200)
    result = run_tool('run_experiments', '--plan', 'adamixer-6stage', '--report-only',
                      '--work-dir', str(work_dir), '--out', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'out' / 'adamixer-6stage' / 'results.md').read_text()
    d = paired_difference([0.49, 0.37, 0.46], [0.50, 0.40, 0.45])
    row = (f'| lors-adamixer 6-stage | adamixer 6-stage | 400 | 3 | 0.440 ± 0.062 | '
           f'0.450 ± 0.050 | '
           f'{d["mean"]:+.3f} | [{d["low"]:+.3f}, {d["high"]:+.3f}] |')
    assert row in table
    assert '| lors-adamixer 6-stage | adamixer 6-stage | 200 | 3 |' in table


def test_report_pairs_a_run_with_each_run_it_names(tmp_path, finished_run, run_tool):
    """A run PAIRED_WITH names two runs gets a row against each (plan detr-private-lr:
    LORS with the faster private B against stock and against plain LORS)."""
    work_dir = tmp_path / 'runs'
    aps = {'dino lr 1e-3': [0.36, 0.55], 'lors-dino encoder+decoder lr 1e-3': [0.26, 0.52],
           'lors-dino encoder+decoder lr 1e-3 private-lr x8': [0.25, 0.48]}
    for name, maps in aps.items():
        for seed in (0, 1):
            finished_run(work_dir, 'detr-private-lr', name, seed,
                         [m + 0.01 * seed for m in maps], every=200)
    result = run_tool('run_experiments', '--plan', 'detr-private-lr', '--report-only',
                      '--work-dir', str(work_dir), '--out', str(tmp_path / 'out'))
    assert result.returncode == 0, result.stderr
    table = (tmp_path / 'out' / 'detr-private-lr' / 'results.md').read_text()
    x8 = 'lors-dino encoder+decoder lr 1e-3 private-lr x8'
    assert f'| {x8} | dino lr 1e-3 | 400 | 2 | 0.485 ± 0.007 | 0.555 ± 0.007 | -0.070 |' \
        in table
    assert (f'| {x8} | lors-dino encoder+decoder lr 1e-3 | 400 | 2 | 0.485 ± 0.007 | '
            '0.525 ± 0.007 | -0.040 |') in table
    assert '| lors-dino encoder+decoder lr 1e-3 | dino lr 1e-3 | 400 | 2 |' in table


def test_a_run_begun_at_another_commit_is_not_resumed(tmp_path, run_tool):
    """A run dir records its commit; resuming it from another checkout is refused
    before anything trains (a resumed run would mix two versions of the code)."""
    head = subprocess.run(['git', 'rev-parse', 'HEAD'], cwd=ROOT, capture_output=True,
                          text=True).stdout.strip()
    dirty = subprocess.run(['git', 'status', '--porcelain', '--untracked-files=no', '--',
                            '.', ':(exclude)docs'],
                           cwd=ROOT, capture_output=True, text=True).stdout.strip()
    run = tmp_path / 'runs' / 'adamixer_6-stage' / 'seed0'
    run.mkdir(parents=True)
    (run / 'commit.txt').write_text('0' * 40 + '\n')
    result = run_tool('run_experiments', '--plan', 'adamixer-6stage',
                      '--only', 'adamixer 6-stage', '--seeds', '0',
                      '--work-dir', str(tmp_path / 'runs'), '--out', str(tmp_path / 'out'))
    assert result.returncode != 0
    if dirty:
        assert 'uncommitted changes' in result.stderr
    else:
        assert f'begun at commit {"0" * 40}' in result.stderr and head in result.stderr
    assert sorted(p.name for p in run.iterdir()) == ['commit.txt']  # nothing trained


def test_format_diagnostics_averages_the_seeds():
    from lors_mmdet.diagnostics import format_diagnostics

    def run(ap0, grad):
        losses = {f's{i}.loss_cls': 0.5 for i in range(2)}
        first = dict(checkpoint='iter_200.pth', stage_losses=losses,
                     grad_norms={'s0 mixing': grad, 'shared mixing': 2 * grad},
                     private_residual={f's{i}': dict(static_out_proj=0.1, M=0.2, S=0.3)
                                       for i in range(2)})
        last = dict(first, checkpoint='iter_400.pth',
                    stage_ap={'s0': ap0, 's1': 0.5},
                    update_norms={g: dict(norm=1.0, relative=0.25)
                                  for g in ('s0 mixing', 'shared mixing')})
        return dict(checkpoints=[first, last])
    text = format_diagnostics({'lors': [run(0.2, 1.0), run(0.4, 3.0)]})
    assert '| lors | 2 | 0.300 ± 0.141 | 0.500 ± 0.000 |' in text
    assert '| shared mixing | 4 | 4 |' in text  # mean gradient norm, both checkpoints
    assert '| iter_400.pth | 0.100 / 0.200 / 0.300 |' in text
    assert '| s0 mixing | 0.25 |' in text


def test_format_diagnostics_pairs_each_run_with_the_first_by_seed():
    """Each stage's own AP, its gain over the stage before and its losses, LORS - stock
    over the seeds both have (seed 2 of stock and seed 5 of LORS have no partner), with
    the Student-t interval re-derived here from scipy's t distribution."""
    from scipy import stats

    from lors_mmdet.diagnostics import format_diagnostics

    def run(model, seed, ap, cls):
        checkpoints = [dict(checkpoint=f'iter_{it}.pth',
                            stage_losses={f's{i}.{name}': value * (i + 1) * it / 400
                                          for i in range(2)
                                          for name, value in (('loss_cls', cls),
                                                              ('loss_iou', 1.0))})
                       for it in (200, 400)]
        checkpoints[-1]['stage_ap'] = {'s0': 0.0, 's1': ap}
        return dict(run_dir=f'work_dirs/x/{model}/seed{seed}/', checkpoints=checkpoints)
    stock = [run('stock', s, ap, cls) for s, ap, cls in ((0, 0.5, 0.3), (1, 0.6, 0.2),
                                                           (2, 0.9, 0.9))]
    lors = [run('lors', s, ap, cls) for s, ap, cls in ((1, 0.55, 0.3), (0, 0.4, 0.35),
                                                         (5, 0.1, 0.1))]
    text = format_diagnostics({'stock': stock, 'lors': lors})
    assert 'lors - stock, paired by seed (2 seeds)' in text
    diffs = [0.4 - 0.5, 0.55 - 0.6]  # seeds 0 and 1
    mean = sum(diffs) / 2
    low, high = stats.t.interval(0.95, 1, loc=mean, scale=stats.sem(diffs))
    ap = f'{mean:+.3f} [{low:+.3f}, {high:+.3f}]'
    assert f'| own AP, last checkpoint | +0.000 [+0.000, +0.000] | {ap} |' in text
    assert f'| gain over the stage before | - | {ap} |' in text
    # stage 1's class loss at iteration 200 is cls * 2 * 0.5: differences 0.05 and 0.1
    cls = [0.35 - 0.3, 0.3 - 0.2]
    low, high = stats.t.interval(0.95, 1, loc=sum(cls) / 2, scale=stats.sem(cls))
    assert (f'| loss_cls, iter_200.pth | {sum(cls) / 4:+.3f} [{low / 2:+.3f}, '
            f'{high / 2:+.3f}] | {sum(cls) / 2:+.3f} [{low:+.3f}, {high:+.3f}] |') in text
    assert '| loss_iou, iter_400.pth | +0.000 [+0.000, +0.000] | +0.000 [+0.000, +0.000] |' \
        in text


def test_stack_residual_sizes_of_any_lors_model():
    """Zero with B = 0; after setting one layer's B, that layer's ratio is the mean over
    the stack's projections of |B A| / |W_shared|, computed here directly."""
    from lors_mmdet.diagnostics import stack_residual_sizes
    from lors_mmdet.lors import apply_lors
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.layers = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 8))
        for _ in range(3))
    stack = apply_lors(model, 'layers', dict(rank=2))
    assert stack_residual_sizes(model) == {'lors_layers': [0.0, 0.0, 0.0]}
    with torch.no_grad():
        for lors in (model.layers[1][0], model.layers[1][2]):
            lors.lors_B.normal_()
    expected = sum(float((m.lors_B @ m.lors_A).norm() / m.shared.weight.norm())
                   for m in (model.layers[1][0], model.layers[1][2])) / 2
    sizes = stack_residual_sizes(model)['lors_layers']
    assert sizes[0] == sizes[2] == 0.0
    assert sizes[1] == pytest.approx(expected) and expected > 0
    assert len(stack.plans) == 2


def test_layer_updates_compare_stock_and_lors_layers_alike():
    """A LORS model's layers are read as their effective weights (stock keys): its
    state equals the stock model it was derived from; moving the shared weight moves
    every layer by |dW| / |W_i| (computed here from W_shared + B A by hand), moving one
    stock layer moves that layer only."""
    import copy

    from lors_mmdet.diagnostics import layer_updates, stack_containers, stock_state
    from lors_mmdet.lors import apply_lors
    torch.manual_seed(0)
    stock = torch.nn.Module()
    stock.layers = torch.nn.ModuleList(
        torch.nn.Sequential(torch.nn.Linear(8, 6), torch.nn.ReLU(), torch.nn.Linear(6, 8))
        for _ in range(3))
    lors = copy.deepcopy(stock)
    apply_lors(lors, 'layers', dict(rank='full', init='dense'))
    containers = stack_containers(lors)
    assert containers == {'layers': 3} and stack_containers(stock) == {}

    before = stock_state(lors)
    reference = stock_state(stock)
    assert before.keys() == reference.keys()
    for key in reference:
        torch.testing.assert_close(before[key], reference[key], atol=1e-6, rtol=0)

    delta = torch.randn(6, 8)
    with torch.no_grad():
        lors.layers[0][0].shared.weight += delta
    moved = layer_updates(before, stock_state(lors), containers)['layers']
    assert moved['own'] == pytest.approx([0.0] * 3, abs=1e-6)  # one step for all layers
    for i, layer in enumerate(lors.layers):
        # the effective weights before the move, by hand: W_shared - delta + B A (first
        # matrix, whose shared weight moved), W_shared + B A (second)
        first, second = ((m.shared.weight.double() + m.lors_B.double() @ m.lors_A.double())
                         .detach() for m in (layer[0], layer[2]))
        size = float(torch.cat([(first - delta.double()).flatten(), second.flatten()]).norm())
        assert moved['moved'][i] == pytest.approx(float(delta.double().norm()) / size,
                                                  rel=1e-6)

    with torch.no_grad():
        stock.layers[1][2].weight += 0.5
    moved = layer_updates(reference, stock_state(stock), containers)['layers']
    assert moved['moved'][0] == moved['moved'][2] == 0.0
    # layer 1 alone moved by E: mean step E / 3, its own part 2/3 of E
    assert moved['own'][1] == pytest.approx(2 / 3)
    expected = 0.5 * 48**0.5 / float(torch.cat([
        reference['layers.1.0.weight'].flatten(), reference['layers.1.2.weight'].flatten()
    ]).norm())
    assert moved['moved'][1] == pytest.approx(expected)
    with pytest.raises(KeyError, match='layers.3.'):
        layer_updates(reference, reference, {'layers': 4})


def test_logged_losses_average_each_stage_over_the_last_iterations(tmp_path):
    """mmengine's scalars.json of a run resumed once (two timestamped folders, the
    resumed iteration logged twice): each stage's loss is the mean over the kept
    iterations, each iteration once; the stages come in stage order."""
    from lors_mmdet.diagnostics import logged_losses
    first, second = tmp_path / '20261207_000000', tmp_path / '20261207_010000'
    for folder, iters in ((first, range(10, 60, 10)), (second, range(50, 110, 10))):
        (folder / 'vis_data').mkdir(parents=True)
        with open(folder / 'vis_data' / 'scalars.json', 'w') as f:
            for it in iters:
                record = {'iter': it, 'loss': 1.0, 'lr': 1e-3, 'loss_cls': it / 100,
                          'd1.loss_cls': it / 50, 'd0.loss_cls': 3.0,
                          'd0.dn_loss_cls': 0.5, 'enc_loss_cls': 2.0, 'loss_bbox': 9.0}
                f.write(json.dumps(record) + '\n')
            f.write(json.dumps({'coco/bbox_mAP': 0.1, 'step': 0}) + '\n')
    # default: the last fifth of 100 logged iterations, i.e. 80, 90, 100
    assert list(logged_losses(str(tmp_path))) == [
        'enc_loss_cls', 'd0.loss_cls', 'd1.loss_cls', 'loss_cls', 'd0.dn_loss_cls']
    assert logged_losses(str(tmp_path))['loss_cls'] == pytest.approx(0.9)
    # from 50 (logged by both attempts, counted once): 50..100
    losses = logged_losses(str(tmp_path), from_iter=50)
    assert losses['loss_cls'] == pytest.approx(0.75)
    assert losses['d1.loss_cls'] == pytest.approx(1.5)
    assert logged_losses(str(tmp_path), 'loss_bbox') == {'loss_bbox': 9.0}
    with pytest.raises(ValueError, match='no logged iteration at or after 200'):
        logged_losses(str(tmp_path), from_iter=200)
    with pytest.raises(FileNotFoundError, match='no logged training losses'):
        logged_losses(str(tmp_path / 'missing'))


def _truncated_dino(model, layers: int):
    """A copy of a DINO whose decoder has only its first ``layers`` layers, its
    encoder's branch (the head's last) kept last: an independent way to the
    predictions of layer ``layers - 1``."""
    import copy
    truncated = copy.deepcopy(model)
    truncated.decoder.layers = truncated.decoder.layers[:layers]
    truncated.decoder.num_layers = layers
    head = truncated.bbox_head
    for name in ('cls_branches', 'reg_branches'):
        branches = getattr(head, name)
        setattr(head, name, torch.nn.ModuleList(list(branches[:layers]) + [branches[-1]]))
    return truncated


def test_decoder_cut_predicts_like_a_decoder_of_that_depth():
    from test_detr_convert import assert_same_predictions, predictions
    from test_detr_lors import build_model, randomize_, tiny_batch, tiny_model_cfg

    from lors_mmdet.diagnostics import decoder_cut
    model = build_model(tiny_model_cfg('DINO'))
    randomize_(model.decoder)
    randomize_(model.bbox_head, seed=1)
    model.eval()
    batch = tiny_batch(model, training=False)
    full = predictions(model, batch)
    for layers in (1, 2, 3):
        with decoder_cut(model.bbox_head, layers):
            cut = predictions(model, batch)
        assert_same_predictions(cut, predictions(_truncated_dino(model, layers), batch))
        if layers < 3:
            assert not torch.allclose(cut[0].scores, full[0].scores)
    assert 'forward' not in vars(model.bbox_head)
    assert_same_predictions(predictions(model, batch), full)
    with pytest.raises(ValueError, match='layers=4, the decoder has 3 layers'):
        with decoder_cut(model.bbox_head, 4):
            predictions(model, batch)


def test_kept_in_run_computes_once_unless_forced(tmp_path):
    from lors_mmdet.diagnostics import kept_in_run
    calls = []

    def compute():
        calls.append(1)
        return {'d0': 0.5 * len(calls)}
    assert kept_in_run(str(tmp_path), 'x.json', False, compute) == {'d0': 0.5}
    assert kept_in_run(str(tmp_path), 'x.json', False, compute) == {'d0': 0.5}
    assert len(calls) == 1
    with open(tmp_path / 'x.json') as f:
        assert json.load(f) == {'d0': 0.5}
    assert kept_in_run(str(tmp_path), 'x.json', True, compute) == {'d0': 1.0}
    with open(tmp_path / 'x.json') as f:
        assert json.load(f) == {'d0': 1.0}


def test_format_layer_ap_pairs_the_last_two_layers_by_seed():
    """The last column is the paired difference of each run's last two layers (scipy's
    paired t interval re-derived; none for one seed), and a one-layer decoder gets '-'
    instead of an error."""
    from scipy import stats

    from lors_mmdet.diagnostics import format_layer_ap, mean_std
    stock = [dict(d0=0.40, d1=0.50, d2=0.56), dict(d0=0.42, d1=0.51, d2=0.55),
             dict(d0=0.41, d1=0.52, d2=0.58)]
    single = [dict(d0=0.30), dict(d0=0.32)]
    rows = format_layer_ap({'one layer': single, 'dino': stock}).splitlines()
    assert rows[0] == '| run | seeds | d0 | d1 | d2 | last - the one before, 95% CI |'
    cells = rows[3].split(' | ')
    diffs = [r['d2'] - r['d1'] for r in stock]
    mean = sum(diffs) / 3
    half = stats.t.ppf(0.975, 2) * stats.tstd(diffs) / 3**0.5
    assert cells[:3] == ['| dino', '3', mean_std([0.40, 0.42, 0.41])]
    assert cells[-1] == f'{mean:+.3f} [{mean - half:+.3f}, {mean + half:+.3f}] |'
    assert rows[2] == f'| one layer | 2 | {mean_std([0.30, 0.32])} | - | - | - |'
    # one seed: the difference without an interval it cannot have
    assert format_layer_ap({'dino': stock[:1]}).splitlines()[2].endswith(
        f'| {0.56 - 0.50:+.3f} |')
    with pytest.raises(ValueError, match='differ in depth'):
        format_layer_ap({'mixed': [dict(d0=0.1), dict(d0=0.1, d1=0.2)]})


def test_format_logged_losses_marks_a_loss_a_seed_did_not_log():
    from lors_mmdet.diagnostics import format_logged_losses
    table = format_logged_losses({
        'lors': [{'d0.loss_cls': 0.3, 'loss_cls': 0.2}, {'d0.loss_cls': 0.5, 'loss_cls': 0.4}],
        'stock': [{'enc_loss_cls': 0.6, 'd0.loss_cls': 0.1, 'loss_cls': 0.1}]})
    rows = table.splitlines()
    assert rows[0] == '| run | seeds | enc_loss_cls | d0.loss_cls | loss_cls |'
    assert rows[2] == '| lors | 2 | - | 0.400 | 0.300 |'
    assert rows[3] == '| stock | 1 | 0.600 | 0.100 | 0.100 |'


def _gradient_batch(seed: int = 0):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(seed)
    return demo_mm_inputs(2, [[3, 64, 64], [3, 64, 64]], num_classes=5, num_items=[3, 2])


def test_layer_gradients_of_a_stock_decoder_by_hand():
    """norm, share, align and others re-derived from torch.autograd.grad on each layer's
    matrices, summed over two batches."""
    from test_detr_lors import build_model, tiny_model_cfg

    from lors_mmdet.diagnostics import layer_gradients
    model = build_model(tiny_model_cfg('DINO'))
    batches = [_gradient_batch(0), _gradient_batch(1)]
    result = layer_gradients(model, batches, {'decoder.layers': 3}, seed=3)
    model.train()
    matrices = [[p for p in layer.parameters() if p.dim() == 2] for layer in model.decoder.layers]
    flat = [p for layer in matrices for p in layer]
    grads = [torch.zeros_like(p, dtype=torch.float64) for p in flat]
    for batch in batches:
        torch.manual_seed(3)
        loss = model.parse_losses(model(**model.data_preprocessor(batch, True), mode='loss'))[0]
        for total, g in zip(grads, torch.autograd.grad(loss, flat)):
            total += g.double()
    per_layer, start = [], 0
    for layer in matrices:
        per_layer.append(torch.cat([g.flatten() for g in grads[start:start + len(layer)]]))
        start += len(layer)
    total = sum(per_layer)
    norms = [g.norm() for g in per_layer]

    def cos(a, b):
        return float(a @ b / (a.norm() * b.norm()))

    got = result['decoder.layers']
    assert got['norm'] == pytest.approx([float(n) for n in norms], rel=1e-5)
    assert got['share'] == pytest.approx([float(n / sum(norms)) for n in norms], rel=1e-5)
    assert got['align'] == pytest.approx([cos(g, total) for g in per_layer], rel=1e-5)
    assert got['others'] == pytest.approx([cos(g, total - g) for g in per_layer], rel=1e-4)
    one = layer_gradients(model, batches[:1], {'decoder.layers': 3}, seed=3)['decoder.layers']
    assert one['norm'] != pytest.approx(got['norm'], rel=1e-3)  # both batches count
    assert not any(p.grad is not None for p in model.parameters())  # measured on a copy


def test_layer_gradients_of_a_lors_decoder_sum_to_its_shared_gradient():
    """The layers' gradients, measured on the merged copy, add up to the gradient the
    LORS model's own shared weights get: |sum_i g_i| = sum_i align_i |g_i|."""
    from test_detr_lors import build_model, randomize_, tiny_model_cfg

    from lors_mmdet.diagnostics import layer_gradients, stack_containers
    model = build_model(tiny_model_cfg('DINO', lors=dict(decoder=dict(rank=4))))
    for i, layer in enumerate(model.decoder.layers):  # layers that differ
        randomize_(layer, scale=0.02, seed=i)
    batch = _gradient_batch()
    containers = stack_containers(model)
    assert containers == {'decoder.layers': 3}
    got = layer_gradients(model, [batch], containers, seed=3)['decoder.layers']
    model.train()
    torch.manual_seed(3)
    model.parse_losses(model(**model.data_preprocessor(batch, True), mode='loss'))[0].backward()
    shared = [p.grad.double().flatten() for n, p in model.decoder.lors_layers.named_parameters()
              if p.dim() == 2]
    assert shared
    shared_norm = float(torch.cat(shared).norm())
    assert sum(a * n for a, n in zip(got['align'], got['norm'])) == pytest.approx(
        shared_norm, rel=1e-4)
    assert len(set(round(a, 6) for a in got['align'])) == 3


def test_format_layer_gradients_averages_each_layer_over_the_seeds():
    from lors_mmdet.diagnostics import format_layer_gradients, mean_std
    seeds = [{'decoder.layers': dict(norm=[1, 1], share=[0.6, 0.4], align=[0.9, 0.3],
                                     others=[0.2, 0.1])},
             {'decoder.layers': dict(norm=[1, 1], share=[0.5, 0.5], align=[0.8, 0.5],
                                     others=[0.0, 0.3])}]
    rows = format_layer_gradients({'dino': seeds}).splitlines()
    assert rows[2] == (f'| dino | 2 | decoder.layers | {mean_std([0.6, 0.5])}, '
                       f'{mean_std([0.4, 0.5])} | {mean_std([0.9, 0.8])}, '
                       f'{mean_std([0.3, 0.5])} | {mean_std([0.2, 0.0])}, '
                       f'{mean_std([0.1, 0.3])} |')
