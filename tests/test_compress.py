"""Compress a trained detector: tools/compress.py, then tools/test.py and
tools/train.py on what it wrote; the distillation option.

The trained checkpoint is a real one: tools/train.py on the tiny stock DETR
(tests/configs/tiny_detr_synthetic.py) for one epoch on synthetic data.
"""
import functools
import glob
import http.server
import json
import os
import os.path as osp
import pickle
import subprocess
import sys
import threading

import numpy as np
import pytest
import torch
from mmengine.config import Config

import lors_mmdet  # noqa: F401
from lors_mmdet.apis import build_model, read_checkpoint
from lors_mmdet.apis import compress, parse_rank_overrides
from lors_mmdet.apis.compression import calibration_loader, lors_class_for
from lors_mmdet.models.compression import (choose_ranks, compress_model,
                                                input_statistics,
                                                lors_stack_dict)
from lors_mmdet.engine.lors_settings import recorded_settings
from lors_mmdet.lors import apply_lors, dense_weight, find_lors_stacks
from lors_mmdet.models.distill import parse_distill_cfg

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
CONFIG = osp.join(ROOT, 'tests', 'configs', 'tiny_detr_synthetic.py')


def data_options(data_root):
    ann = data_root + 'annotations/instances_val.json'
    return [f'{split}_dataloader.dataset.data_root={data_root}'
            for split in ('train', 'val', 'test')] + [
                f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}']


def run_tool(args, **env):
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT, **env)
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    return result


@pytest.fixture(scope='module')
def data_root(synthetic_coco_factory):
    return synthetic_coco_factory(num_train=16, num_val=8, img_size=64, seed=0)


@pytest.fixture(scope='module')
def trained(tmp_path_factory, data_root):
    """A stock tiny DETR trained for one epoch by tools/train.py."""
    work_dir = str(tmp_path_factory.mktemp('stock'))
    run_tool(['tools/train.py', CONFIG, '--work-dir', work_dir,
              '--cfg-options', 'train_cfg.max_epochs=1', *data_options(data_root)])
    return osp.join(work_dir, 'epoch_1.pth')


def test_test(config, checkpoint, data_root, work_dir):
    """tools/test.py: (COCO metrics, predictions)."""
    out = osp.join(work_dir, 'preds.pkl')
    run_tool(['tools/test.py', config, checkpoint, '--work-dir', work_dir,
              '--out', out, '--cfg-options', *data_options(data_root)])
    metrics = sorted(glob.glob(osp.join(work_dir, '*', '*.json')))[-1]
    with open(metrics) as f, open(out, 'rb') as g:
        return json.load(f), pickle.load(g)


test_test.__test__ = False  # a helper, not a test


def test_full_rank_round_trip_reproduces_the_stock_detections(
        trained, data_root, tmp_path):
    out = str(tmp_path / 'out')
    result = run_tool(['tools/compress.py', CONFIG, trained, '--out', out,
                       '--stacks', 'decoder', 'encoder', '--rank', 'full'])
    report = result.stdout
    assert 'decoder  cross_attn.attn.q_proj' in report
    assert 'encoder  ffn.layers.1' in report
    assert '32/32' in report and '1.000  1.000 1.000 1.000' in report
    assert 'transformer' in report and 'total' in report
    name = 'lors-compressed_tiny_detr_synthetic'
    config, checkpoint = osp.join(out, name + '.py'), osp.join(out, name + '.pth')
    stock_metrics, stock_preds = test_test(CONFIG, trained, data_root,
                                           str(tmp_path / 'stock'))
    lors_metrics, lors_preds = test_test(config, checkpoint, data_root,
                                         str(tmp_path / 'lors'))
    assert lors_metrics['coco/bbox_mAP'] == pytest.approx(
        stock_metrics['coco/bbox_mAP'], abs=1e-3)
    assert len(lors_preds) == len(stock_preds) == 8
    for lors_pred, stock_pred in zip(lors_preds, stock_preds):
        lors_inst, stock_inst = lors_pred['pred_instances'], stock_pred[
            'pred_instances']
        assert torch.equal(lors_inst['labels'], stock_inst['labels'])
        torch.testing.assert_close(lors_inst['scores'], stock_inst['scores'],
                                   rtol=0, atol=1e-4)
        torch.testing.assert_close(lors_inst['bboxes'], stock_inst['bboxes'],
                                   rtol=0, atol=1e-3)
    # the written files: config inherits the stock one, checkpoint records
    # its LORS settings
    cfg = Config.fromfile(config)
    assert cfg.model.type == 'LorsDETR' and cfg.load_from == osp.abspath(
        checkpoint)
    assert cfg.model.lors.decoder.rank == cfg.model.lors.encoder.rank == 32
    assert cfg.train_cfg.max_epochs == 1  # 20% of 5
    assert cfg.optim_wrapper.optimizer.lr == pytest.approx(1e-4)
    assert cfg.model.backbone.depth == 18  # inherited
    state_dict, meta = read_checkpoint(checkpoint)
    assert recorded_settings(dict(meta=meta)) == {
        'model.type': 'LorsDETR',
        'model.lors': dict(decoder=dict(rank=32), encoder=dict(rank=32))}
    assert any(k.startswith('decoder.lors_layers.shared') for k in state_dict)
    assert meta['dataset_meta']['classes'][0] == 'circle'  # kept for inference
    assert meta['compressed_from'] == dict(config=CONFIG, checkpoint=trained)


def test_full_rank_is_exact_in_float64(trained):
    """The compression's own steps on the trained model, in float64."""
    from mmdet.testing import demo_mm_inputs
    cfg = Config.fromfile(CONFIG)
    model = build_model(cfg.model).double().eval()
    model.load_state_dict(read_checkpoint(trained)[0])
    torch.manual_seed(0)
    data = model.data_preprocessor(
        demo_mm_inputs(2, [[3, 64, 64], [3, 48, 64]], num_classes=6), False)
    data['inputs'] = data['inputs'].double()
    expected = model(**data, mode='tensor')
    choices = choose_ranks(model, ['decoder', 'encoder'], rank='full')
    for part in ('decoder', 'encoder'):
        assert all(c.kept_energy == (1.0, ) * len(c.kept_energy)
                   for c in choices[part].values())
        apply_lors(getattr(model, part), 'layers',
                   dict(lors_stack_dict(choices[part]), init='dense'))
    got = model(**data, mode='tensor')
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=0, atol=1e-10)


@pytest.mark.parametrize('family', ['DABDETR', 'DDQDETR'])
def test_other_families_compress_to_their_registered_lors_variant(family):
    """mmdet's own DAB-DETR / DDQ-DETR configs shrunk (as in
    test_detr_stacks): compressed in place at an energy target, the state
    dict loads strictly into Lors<Type> built from the written lors dict and
    computes what the compressed model computes; at full rank, what the stock
    model computes."""
    from test_detr_stacks import batch, build, flat, randomise, tiny_cfg
    assert lors_class_for(dict(type=family)).__name__ == 'Lors' + family
    for rank, energy in ((None, 0.7), ('full', None)):
        stock = build(tiny_cfg(family)).eval()
        randomise(stock)
        data = batch(stock, torch.float32)
        expected = flat(stock(**data, mode='tensor'))
        lors, choices, _ = compress_model(stock, ['decoder', 'encoder'], rank,
                                       energy)
        got = flat(stock(**data, mode='tensor'))
        lors_model = build(tiny_cfg(family, lors)).eval()
        lors_model.load_state_dict(stock.state_dict())  # strict
        for a, b in zip(flat(lors_model(**data, mode='tensor')), got):
            torch.testing.assert_close(a, b, rtol=0, atol=0)
        kept = [c.min_kept_energy for p in choices.values()
                for c in p.values()]
        if energy is not None:
            assert min(kept) >= energy and max(
                c.rank for p in choices.values() for c in p.values()) < 32
        else:
            assert kept == [1.0] * len(kept)
            for a, b in zip(got, expected):
                torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-5)


def test_families_without_a_stack_variant_are_named():
    with pytest.raises(ValueError, match='no LORS variant of RetinaNet'):
        lors_class_for(dict(type='RetinaNet'))


def test_energy_target_keeps_the_target(trained, tmp_path):
    result = compress(CONFIG, trained, str(tmp_path), parts=['decoder'],
                      energy=0.6, ranks={None: {'ffn.*': 4}})
    checkpoint, _ = read_checkpoint(result.checkpoint)
    stock, _ = read_checkpoint(trained)
    cfg = Config.fromfile(result.config)
    lors_model = build_model(cfg.model)
    lors_model.load_state_dict(checkpoint)  # strict
    stock_model = build_model(Config.fromfile(CONFIG).model)
    stock_model.load_state_dict(stock)
    stack = dict(lors_model.lors_stacks())['decoder.lors_layers']
    choices = result.choices['decoder']
    assert set(choices) == set(stack.plans)
    for path, choice in choices.items():
        # independent: numpy on the stock weights vs the compressed layers
        weights = [dense_weight(layer, path).detach().double().numpy()
                   for layer in stock_model.decoder.layers]
        mean = np.mean(weights, axis=0)
        kept = [1 - np.linalg.norm(w - lors.weight.detach().double().numpy())**2
                / np.linalg.norm(w - mean)**2
                for w, lors in zip(weights, stack.lors_linears(path))]
        np.testing.assert_allclose(kept, choice.kept_energy, atol=1e-5)
        if path.startswith('ffn'):
            assert choice.rank == 4 and choice.target is None
        else:
            assert choice.target == 0.6 and min(kept) >= 0.6 - 1e-5
            # the smallest rank: one less misses the target in some layer
            singular = [np.linalg.svd(w - mean, compute_uv=False)
                        for w in weights]
            energy = [np.cumsum(s**2) / np.sum(s**2) for s in singular]
            assert min(e[choice.rank - 1] for e in energy) >= 0.6 - 1e-9
            if choice.rank > 1:
                assert min(e[choice.rank - 2] for e in energy) < 0.6
        assert stack.plans[path].ranks == (choice.rank, ) * 3
    assert 'encoder' not in cfg.model.lors
    assert result.params_after['encoder'] == result.params_before['encoder']


def test_refuses_to_overwrite_without_force(trained, tmp_path):
    result = compress(CONFIG, trained, str(tmp_path), rank=2)
    with open(result.checkpoint, 'rb') as f:
        before = f.read()
    with pytest.raises(FileExistsError, match='pass --force'):
        compress(CONFIG, trained, str(tmp_path), rank=4)
    with open(result.checkpoint, 'rb') as f:
        assert f.read() == before
    compress(CONFIG, trained, str(tmp_path), rank=4, force=True)
    assert Config.fromfile(result.config).model.lors.decoder.rank == 4
    assert not [n for n in os.listdir(tmp_path) if n.startswith('.')]


@pytest.mark.parametrize('kwargs, error, message', [
    (dict(rank=2, ranks={None: {'nope.*': 3}}), ValueError,
     r'--ranks pattern\(s\) match no projection'),
    (dict(rank=100), ValueError, r'exceeds min\(in_features, out_features\)'),
    (dict(rank=2, parts=['neck']), ValueError, r'--stacks\) of LorsDETR must be some of'),
])
def test_bad_requests_are_named(trained, tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        compress(CONFIG, trained, str(tmp_path), **kwargs)
    assert not os.listdir(tmp_path)


def test_a_lors_config_or_a_foreign_checkpoint_is_refused(trained, tmp_path):
    lors_cfg = tmp_path / 'lors.py'
    lors_cfg.write_text(f"_base_ = {CONFIG!r}\nmodel = dict(type='LorsDETR')\n")
    with pytest.raises(ValueError, match='must be a stock mmdet detector'):
        compress(str(lors_cfg), trained, str(tmp_path / 'a'), rank=2)
    other = Config.fromfile(CONFIG)
    other.model.decoder.num_layers = 2
    torch.save(dict(state_dict=build_model(other.model).state_dict()),
               tmp_path / 'other.pth')
    with pytest.raises(ValueError, match='does not fit the model built from '
                       'the config: missing'):
        compress(CONFIG, str(tmp_path / 'other.pth'), str(tmp_path / 'b'),
                 rank=2)


def test_rank_overrides_parse():
    assert parse_rank_overrides(['ffn.*=8', 'decoder:cross_attn.*=4']) == {
        None: {'ffn.*': 8}, 'decoder': {'cross_attn.*': 4}}
    for bad in ('ffn.*', 'ffn.*=0', 'neck:x=2', '=3'):
        with pytest.raises(ValueError, match=r'\[PART:\]PATTERN=RANK'):
            parse_rank_overrides([bad])


@pytest.fixture
def url_of(tmp_path, monkeypatch):
    """Serve tmp_path on a loopback HTTP server; torch.hub caches there."""
    handler = functools.partial(http.server.SimpleHTTPRequestHandler,
                                directory=str(tmp_path))
    handler.log_message = lambda *args: None
    server = http.server.ThreadingHTTPServer(('127.0.0.1', 0), handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield lambda name: f'http://127.0.0.1:{server.server_port}/{name}'
    server.shutdown()
    server.server_close()


def test_checkpoint_by_url_then_fine_tune_with_distillation(
        trained, data_root, tmp_path, url_of):
    """The checkpoint comes by URL (the safe loader, torch.hub's cache); the
    written config fine-tunes with tools/train.py from the compressed
    checkpoint, distilling from the stock model (loss in the log)."""
    with open(trained, 'rb') as f, open(tmp_path / 'stock.pth', 'wb') as g:
        g.write(f.read())
    out = str(tmp_path / 'out')
    hub = dict(TORCH_HOME=str(tmp_path / 'torch_home'))
    run_tool(['tools/compress.py', CONFIG, url_of('stock.pth'), '--out', out,
              '--name', 'small', '--energy', '0.5', '--distill', '0.5'], **hub)
    cfg = Config.fromfile(osp.join(out, 'small.py'))
    assert cfg.model.distill.teacher_checkpoint == url_of('stock.pth')
    assert cfg.model.distill.weight == 0.5
    work_dir = str(tmp_path / 'finetune')
    result = run_tool(['tools/train.py', osp.join(out, 'small.py'),
                       '--work-dir', work_dir, '--cfg-options',
                       *data_options(data_root)], **hub)
    assert 'small.pth' in result.stdout + result.stderr  # load_from
    records = []
    for path in glob.glob(osp.join(work_dir, '*', 'vis_data', 'scalars.json')):
        with open(path) as f:
            records += [json.loads(line) for line in f]
    train = [r for r in records if 'loss' in r]
    assert len(train) == 4  # one epoch of 16 images, batch 4
    assert all(r['loss_distill_cls'] >= 0 and r['loss_distill_bbox'] >= 0
               for r in train)
    assert any('coco/bbox_mAP' in r for r in records)


# --------------------------------------------------------------------------
# distillation, in process
# --------------------------------------------------------------------------
def distilled_model(trained, **distill):
    cfg = Config.fromfile(CONFIG)
    cfg.model.type = 'LorsDETR'
    cfg.model.lors = dict(decoder=dict(rank=2))
    cfg.model.distill = dict(teacher_config=CONFIG, teacher_checkpoint=trained,
                             **distill)
    return build_model(cfg.model)


def train_batch(model):
    from mmdet.testing import demo_mm_inputs
    torch.manual_seed(0)
    packed = demo_mm_inputs(2, [[3, 64, 64], [3, 64, 64]], num_classes=6,
                            num_items=[3, 2])
    return model.data_preprocessor(packed, True)


def test_distillation_teacher_is_frozen_and_outside_the_model(trained):
    from mmengine.optim import build_optim_wrapper
    model = distilled_model(trained, weight=2.0).train()
    state_keys = set(model.state_dict())
    parameters = {id(p) for p in model.parameters()}
    optim = build_optim_wrapper(model, dict(
        type='OptimWrapper', optimizer=dict(type='AdamW', lr=1e-4)))
    assert model.distill_teacher is None  # built on the first step
    losses = model(**train_batch(model), mode='loss')
    teacher = model.distill_teacher
    assert teacher is not None and not teacher.training
    assert all(not p.requires_grad for p in teacher.parameters())
    assert type(teacher).__name__ == 'DETR'
    # the teacher is the stock checkpoint
    for key, value in read_checkpoint(trained)[0].items():
        torch.testing.assert_close(teacher.state_dict()[key], value)
    assert set(model.state_dict()) == state_keys
    assert {id(p) for p in model.parameters()} == parameters
    in_optimizer = {id(p) for group in optim.optimizer.param_groups
                    for p in group['params']}
    assert not in_optimizer & {id(p) for p in teacher.parameters()}
    assert {'loss_distill_cls', 'loss_distill_bbox'} <= set(losses)
    total = sum(v for k, v in losses.items() if 'loss' in k)
    total.backward()
    assert all(p.grad is None for p in teacher.parameters())
    model.train()  # the teacher stays in eval mode
    assert not teacher.training
    # the loss is the weighted distance to the teacher's predictions
    plain = distilled_model(trained, weight=1.0).train()
    plain.load_state_dict(model.state_dict())
    other = plain(**train_batch(plain), mode='loss')
    torch.testing.assert_close(losses['loss_distill_bbox'],
                               2 * other['loss_distill_bbox'])


def test_distillation_is_off_by_default_and_zero_for_the_teacher_itself(
        trained):
    cfg = Config.fromfile(CONFIG)
    cfg.model.type = 'LorsDETR'
    cfg.model.lors = dict(decoder=dict(rank='full', init='dense'))
    model = build_model(cfg.model).eval()
    assert model.distill_cfg is None
    losses = model(**train_batch(model), mode='loss')
    assert not [k for k in losses if 'distill' in k]
    # a student equal to its teacher (full rank, no dropout): zero loss
    stock = build_model(Config.fromfile(CONFIG).model)
    stock.load_state_dict(read_checkpoint(trained)[0])
    apply_lors(stock.decoder, 'layers', dict(rank='full', init='dense'))
    cfg.model.distill = dict(teacher_config=CONFIG, teacher_checkpoint=trained)
    student = build_model(cfg.model).eval()
    student.load_state_dict(stock.state_dict())
    losses = student(**train_batch(student), mode='loss')
    assert float(losses['loss_distill_bbox']) == pytest.approx(0, abs=1e-5)
    assert float(losses['loss_distill_cls']) == pytest.approx(0, abs=1e-5)


@pytest.mark.parametrize('distill, message', [
    (dict(teacher_config='a.py'), 'distill.teacher_checkpoint must be given'),
    (dict(teacher_config='a.py', teacher_checkpoint='b.pth', weigth=1),
     r"unknown key\(s\) \['weigth'\]"),
    (dict(teacher_config='a.py', teacher_checkpoint='b.pth', weight=-1),
     'distill.weight must be a finite number >= 0'),
])
def test_bad_distill_settings_are_named(distill, message):
    with pytest.raises(ValueError, match=message):
        parse_distill_cfg(distill)


def _data_cfg_options(data_root) -> dict:
    return {f'{split}_dataloader.dataset.data_root': data_root
            for split in ('train', 'val', 'test')}


def test_calibrated_full_rank_is_exact(trained, data_root, tmp_path):
    """Data-aware init at full rank (with shared refits) computes the stock model:
    the written config + checkpoint, built and loaded as mmdet would."""
    from mmdet.testing import demo_mm_inputs
    result = compress(CONFIG, trained, str(tmp_path), parts=['decoder', 'encoder'],
                      rank='full', calibrate=2, refit_shared=2,
                      cfg_options=_data_cfg_options(data_root))
    assert max(e for paths in result.output_errors.values() for errors in paths.values()
               for e in errors) < 1e-6
    stock = build_model(Config.fromfile(CONFIG).model).eval()
    stock.load_state_dict(read_checkpoint(trained)[0])
    lors = build_model(Config.fromfile(result.config).model).eval()
    lors.load_state_dict(read_checkpoint(result.checkpoint)[0])
    torch.manual_seed(0)
    data = stock.data_preprocessor(
        demo_mm_inputs(2, [[3, 64, 64], [3, 48, 64]], num_classes=6), False)
    with torch.no_grad():
        for a, b in zip(lors(**data, mode='tensor'), stock(**data, mode='tensor')):
            torch.testing.assert_close(a, b, rtol=0, atol=1e-4)


def test_calibrated_init_lowers_the_output_error_at_the_same_ranks(trained, data_root):
    """At the same ranks, every projection of every layer makes no more error on the
    calibration inputs than the weight-space init, and the stack as a whole less."""
    from lors_mmdet.lors.calibrated import output_error
    cfg = Config.fromfile(CONFIG)
    cfg.merge_from_dict(_data_cfg_options(data_root))
    stock = build_model(cfg.model).eval()
    stock.load_state_dict(read_checkpoint(trained)[0])
    parts = ['decoder', 'encoder']
    stats = input_statistics(stock, parts, calibration_loader(cfg), 2, progress=False)
    dense = {part: {path: [dense_weight(layer, path).detach().clone()
                           for layer in getattr(stock, part).layers]
                    for path in stats[part]} for part in parts}
    import copy
    weight_space, calibrated = copy.deepcopy(stock), copy.deepcopy(stock)
    compress_model(weight_space, parts, rank=2)
    _, _, errors = compress_model(calibrated, parts, rank=2, stats=stats)
    totals = [0.0, 0.0]
    for part in parts:
        stacks = [find_lors_stacks(getattr(m, part))[0][1]
                  for m in (weight_space, calibrated)]
        for path, covs in stats[part].items():
            for i, cov in enumerate(covs):
                w = dense[part][path][i]
                ws, cal = (output_error(w, s.lors_linears(path)[i].weight.detach(), cov)
                           for s in stacks)
                assert cal <= ws * (1 + 1e-6) + 1e-12, (part, path, i)
                norm = output_error(w, torch.zeros_like(w), cov)
                if norm > 0:  # (DETR's first decoder layer gets zero values)
                    assert errors[part][path][i] == pytest.approx(
                        (cal / norm)**0.5, rel=1e-3, abs=1e-7)
                totals[0] += ws
                totals[1] += cal
    assert totals[1] < 0.95 * totals[0]


def test_budget_keeps_the_parameters_and_builds_per_layer_ranks(trained, data_root,
                                                                tmp_path):
    budget = 0.8
    result = run_tool(['tools/compress.py', CONFIG, trained, '--out', str(tmp_path),
                       '--stacks', 'decoder', 'encoder', '--budget', str(budget),
                       '--calibrate', '2', '--cfg-options',
                       *[f'{k}={v}' for k, v in _data_cfg_options(data_root).items()]])
    assert 'relative output error on the calibration inputs' in result.stdout
    name = 'lors-compressed_tiny_detr_synthetic'
    cfg = Config.fromfile(str(tmp_path / f'{name}.py'))
    lors = build_model(cfg.model)
    lors.load_state_dict(read_checkpoint(str(tmp_path / f'{name}.pth'))[0])
    stock = build_model(Config.fromfile(CONFIG).model)
    before = sum(p.numel() for part in ('encoder', 'decoder')
                 for p in getattr(stock, part).parameters())
    after = sum(p.numel() for part in ('encoder', 'decoder')
                for p in getattr(lors, part).parameters())
    assert after <= budget * before
    # the budget is used: one more rank in the cheapest projection would not fit
    stacks = dict(lors.lors_stacks())
    cheapest = min(s.lors_linears(path)[0].in_features + s.lors_linears(path)[0].out_features
                   for s in stacks.values() for path in s.plans)
    assert after + cheapest > budget * before
    ranks = {(part, path): plan.ranks
             for part in ('encoder', 'decoder')
             for path, plan in stacks[f'{part}.lors_layers'].plans.items()}
    assert len({r for per_layer in ranks.values() for r in per_layer}) > 1


def test_budget_without_calibration_truncates_in_weight_space(trained, tmp_path):
    """--budget without --calibrate: per-layer ranks by the weight-space error, and
    each layer's residual the truncated SVD of its difference from the mean."""
    budget = 0.8
    result = compress(CONFIG, trained, str(tmp_path), parts=['decoder', 'encoder'],
                      budget=budget)
    assert result.output_errors is None
    assert result.params_after['transformer'] <= budget * result.params_before[
        'transformer']
    stock = build_model(Config.fromfile(CONFIG).model)
    stock.load_state_dict(read_checkpoint(trained)[0])
    lors = build_model(Config.fromfile(result.config).model)
    lors.load_state_dict(read_checkpoint(result.checkpoint)[0])
    stacks = dict(lors.lors_stacks())
    per_layer_ranks = set()
    for part in ('encoder', 'decoder'):
        stack = stacks[f'{part}.lors_layers']
        for path, plan in stack.plans.items():
            per_layer_ranks.update(plan.ranks)
            weights = [dense_weight(layer, path).double()
                       for layer in getattr(stock, part).layers]
            mean = torch.stack(weights).mean(0)
            for weight, layer, rank in zip(weights, stack.lors_linears(path),
                                           plan.ranks):
                u, s, vh = torch.linalg.svd(weight - mean, full_matrices=False)
                best = (u[:, :rank] * s[:rank]) @ vh[:rank]
                got = (layer.lors_B @ layer.lors_A).double()
                torch.testing.assert_close(got, best, rtol=0, atol=1e-5)
    assert len(per_layer_ranks) > 1


@pytest.mark.parametrize('kwargs, message', [
    (dict(refit_shared=2, rank=2), 'needs --calibrate'),
    (dict(calibrate=0, rank=2), 'positive int'),
    (dict(calibrate=1, budget=1.5), r'fraction in \(0, 1\)'),
    (dict(calibrate=1, budget=0.5, rank=2), 'not both'),
    (dict(calibrate=1, budget=0.01), 'even rank 1 everywhere keeps'),
])
def test_bad_calibration_requests_are_named(trained, data_root, tmp_path, kwargs,
                                            message):
    with pytest.raises(ValueError, match=message):
        compress(CONFIG, trained, str(tmp_path), parts=['decoder', 'encoder'],
                 cfg_options=_data_cfg_options(data_root), **kwargs)
    assert not os.listdir(tmp_path)


def test_adamixer_compresses_to_itself_with_model_lors():
    """AdaMixer is its own LORS variant: the compressed model is AdaMixer +
    model.lors (every projection of a stage, the mixing generator included); at rank
    'full' it predicts what the stock model predicts, at rank 8 the model built from
    the written lors dict loads its state strictly."""
    import copy

    from lors_mmdet.analysis import synthetic_batch
    from lors_mmdet.apis import load_config
    from lors_mmdet.apis.compression import lors_class_for
    from lors_mmdet.models.compression import compress_model
    cfg = load_config(osp.join(ROOT, 'configs', 'adamixer',
                               'adamixer_r18-tiny_1xb16-toy_synthetic.py'))
    assert lors_class_for(cfg.model).__name__ == 'AdaMixer'
    with pytest.raises(ValueError, match='without lors'):
        lors_class_for(dict(cfg.model, lors=dict(decoder=dict(rank=4))))
    torch.manual_seed(0)
    stock = build_model(cfg.model).eval()
    batch = synthetic_batch(stock, 2, 64, 64, num_classes=6)

    def predictions(model):
        with torch.no_grad():
            return [(s.pred_instances.scores, s.pred_instances.bboxes)
                    for s in model(**copy.deepcopy(batch), mode='predict')]

    expected = predictions(stock)
    full = copy.deepcopy(stock)
    lors, choices, _ = compress_model(full, ['decoder'], rank='full')
    assert lors['decoder']['include'] == ['*']
    assert 'adaptive_mixing.parameter_generator' in choices['decoder']
    for got, want in zip(predictions(full), expected):
        for a, b in zip(got, want):
            torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
    lors, _, _ = compress_model(stock, ['decoder'], rank=8)
    model_cfg = copy.deepcopy(cfg.model)
    model_cfg.lors = lors
    build_model(model_cfg).load_state_dict(stock.state_dict())  # strict
