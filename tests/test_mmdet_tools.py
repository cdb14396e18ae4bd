"""mmdet's own tools and APIs on this repository's configs.

The scripts are the copies shipped inside the installed mmdet package
(``mmdet/.mim/tools``), run in subprocesses exactly as a user would run them:
train.py, test.py, analysis_tools/get_flops.py and browse_dataset.py. The APIs
(``init_detector``, ``DetInferencer``) run in a subprocess that never imports
lors_mmdet itself: the config's ``custom_imports`` must do it. A toy LORS-DINO
(two iterations on a tiny synthetic set) gives the checkpoint.
"""
import ast
import glob
import json
import os
import os.path as osp
import re
import subprocess
import sys
from typing import List

import pytest
import torch

import mmdet

ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
MMDET_TOOLS = osp.join(osp.dirname(mmdet.__file__), '.mim', 'tools')
CONFIG = osp.join(ROOT, 'configs', 'lors_dino', 'lors-dino-4scale_r18-tiny_1xb8-toy_synthetic.py')


def run(args: List[str], timeout: float = 600) -> subprocess.CompletedProcess:
    env = dict(os.environ, OMP_NUM_THREADS='1', PYTHONPATH=ROOT)
    result = subprocess.run([sys.executable, *args], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=timeout)
    assert result.returncode == 0, (result.stdout + result.stderr)[-4000:]
    return result


@pytest.fixture(scope='module')
def data_root(synthetic_coco_factory) -> str:
    return synthetic_coco_factory(num_train=16, num_val=8, img_size=64, seed=0)


@pytest.fixture(scope='module')
def options(data_root) -> List[str]:
    """--cfg-options for the toy: the tiny data set, no pretrained backbone file,
    no data loader workers, two iterations with a validation and a checkpoint."""
    ann = data_root + 'annotations/instances_val.json'
    return ([f'{split}_dataloader.{key}' for split in ('train', 'val', 'test')
             for key in (f'dataset.data_root={data_root}', 'num_workers=0')] +
            [f'val_evaluator.ann_file={ann}', f'test_evaluator.ann_file={ann}',
             'model.backbone.init_cfg=None', 'train_dataloader.batch_size=2',
             'train_cfg.max_iters=2', 'train_cfg.val_interval=2',
             'default_hooks.checkpoint.interval=2', 'default_hooks.logger.interval=1'])


@pytest.fixture(scope='module')
def trained(tmp_path_factory, options) -> dict:
    work_dir = str(tmp_path_factory.mktemp('mmdet_train'))
    result = run([osp.join(MMDET_TOOLS, 'train.py'), CONFIG, '--work-dir', work_dir,
                  '--cfg-options', *options])
    return dict(work_dir=work_dir, log=result.stdout + result.stderr,
                checkpoint=osp.join(work_dir, 'iter_2.pth'))


@pytest.fixture(scope='module')
def tested(tmp_path_factory, trained, options) -> dict:
    work_dir = str(tmp_path_factory.mktemp('mmdet_test'))
    predictions = osp.join(work_dir, 'predictions.pkl')
    result = run([osp.join(MMDET_TOOLS, 'test.py'), CONFIG, trained['checkpoint'],
                  '--work-dir', work_dir, '--out', predictions, '--cfg-options', *options])
    metrics = glob.glob(osp.join(work_dir, '*', '*.json'))
    assert len(metrics) == 1, metrics
    with open(metrics[0]) as f:
        return dict(log=result.stdout + result.stderr, metrics=json.load(f),
                    predictions=predictions)


def coco_metrics(text: str) -> List[str]:
    return re.findall(r'bbox_mAP_copypaste: ([-\d. ]+)', text)


def test_train_py_trains_the_lors_detector(trained):
    from lors_mmdet.checkpoint_loading import safe_load_checkpoint
    assert re.search(r'Iter\(train\) \[2/2\]', trained['log'])
    checkpoint = safe_load_checkpoint(trained['checkpoint'])
    assert checkpoint['meta']['iter'] == 2
    keys = list(checkpoint['state_dict'])
    # LORS-DINO: one shared copy on the decoder's LORS stack, private low-rank factors per layer
    assert 'decoder.lors_layers.shared.0.ffn.layers.0.0.weight' in keys
    assert 'decoder.layers.0.ffn.layers.0.0.lors_A' in keys
    assert not any(key.startswith('decoder.layers.') and key.endswith('.weight')
                   and '.norms.' not in key for key in keys)  # no private dense copy
    assert len(coco_metrics(trained['log'])) == 1  # the validation at iteration 2


def test_test_py_gives_the_coco_metric_of_the_validation(trained, tested):
    metrics = tested['metrics']
    assert 0 <= metrics['coco/bbox_mAP'] <= 1
    assert 0 <= metrics['coco/bbox_mAP_50'] <= 1
    # same checkpoint, same images: the numbers of the training's own validation
    assert coco_metrics(tested['log']) == coco_metrics(trained['log'])


def test_layer_ap_of_runs_trained_by_train_py(tmp_path, trained, tested):
    import shutil
    runs = [str(tmp_path / name / 'seed0') for name in ('first', 'second')]
    for run_dir in runs:  # two runs: two runners in one process
        shutil.copytree(trained['work_dir'], run_dir)
    picture = str(tmp_path / 'layer_ap.png')
    result = run(['tools/analysis/diagnose_run.py', '--layer-ap', *runs, '--plot', picture])
    assert osp.getsize(picture) > 0
    rows = [line for line in result.stdout.splitlines() if line.startswith('| ')]
    assert rows[0].startswith('| run | seeds | d0 | d1 | d2 |'), result.stdout
    assert [row.split(' | ')[:2] for row in rows[1:]] == [['| first', '1'], ['| second', '1']]
    for run_dir in runs:
        with open(osp.join(run_dir, 'layer_ap.json')) as f:
            layer_ap = json.load(f)
        assert list(layer_ap) == ['d0', 'd1', 'd2']
        # the last layer's own predictions are the detector's: test.py's metric
        assert layer_ap['d2'] == pytest.approx(tested['metrics']['coco/bbox_mAP'])


def test_layer_gradients_of_a_run_trained_by_train_py(tmp_path, trained):
    """--layer-gradients builds the run's own loader and merged model: one row per layer
    container of the LORS stack, shares adding up to 1, cosines in [-1, 1]."""
    import shutil
    run_dir = str(tmp_path / 'lors' / 'seed0')
    shutil.copytree(trained['work_dir'], run_dir)
    result = run(['tools/analysis/diagnose_run.py', '--layer-gradients', '--batches', '2',
                  run_dir])
    rows = [line.split(' | ') for line in result.stdout.splitlines() if line.startswith('| lors')]
    assert [row[:3] for row in rows] == [['| lors', '1', 'decoder.layers']], result.stdout
    share, align, others = ([float(v) for v in cell.rstrip(' |').split(', ')]
                            for cell in rows[0][3:6])
    assert len(share) == len(align) == len(others) == 3
    assert sum(share) == pytest.approx(1, abs=2e-3)
    assert all(-1 <= a <= 1 for a in align + others)


INFERENCE = '''
import json, sys
assert 'lors_mmdet' not in sys.modules
from mmdet.apis import DetInferencer, inference_detector, init_detector
assert 'lors_mmdet' not in sys.modules, 'mmdet imported the plugin itself'
config, checkpoint, image = sys.argv[1:]
model = init_detector(config, checkpoint, device='cpu')
plugin = sys.modules['lors_mmdet'].__file__  # imported by the config's custom_imports
api = inference_detector(model, image).pred_instances
inferencer = DetInferencer(model=config, weights=checkpoint, device='cpu', show_progress=False)
det = inferencer(image, return_datasamples=True)['predictions'][0].pred_instances
print(json.dumps(dict(
    plugin=plugin, model=type(model).__name__, inferencer_model=type(inferencer.model).__name__,
    init_detector={k: api[k].tolist() for k in ('bboxes', 'scores', 'labels')},
    DetInferencer={k: det[k].tolist() for k in ('bboxes', 'scores', 'labels')})))
'''


def test_init_detector_and_det_inferencer_import_the_plugin_through_the_config(
        trained, tested, data_root):
    from mmengine.fileio import load
    image = osp.join(data_root, 'val', '000003.png')
    # the toy config as it is: these APIs never initialise the backbone from its file
    result = run(['-c', INFERENCE, CONFIG, trained['checkpoint'], image])
    answer = json.loads(result.stdout.strip().splitlines()[-1])
    assert answer['plugin'] == osp.join(ROOT, 'lors_mmdet', '__init__.py')
    assert answer['model'] == answer['inferencer_model'] == 'LorsDINO'
    expected = next(p['pred_instances'] for p in load(tested['predictions'])
                    if osp.basename(p['img_path']) == '000003.png')  # test.py's own output
    for api in ('init_detector', 'DetInferencer'):
        got = answer[api]
        assert got['labels'] == expected['labels'].tolist(), api
        torch.testing.assert_close(torch.tensor(got['scores']), expected['scores'],
                                   atol=1e-4, rtol=1e-4, msg=api)
        torch.testing.assert_close(torch.tensor(got['bboxes']), expected['bboxes'],
                                   atol=1e-2, rtol=1e-4, msg=api)


def test_get_flops_counts_the_parameters_of_param_report(options):
    from mmengine.analysis.print_helper import _format_size
    flops = run([osp.join(MMDET_TOOLS, 'analysis_tools', 'get_flops.py'), CONFIG,
                 '--num-images', '1', '--cfg-options', *options]).stdout
    assert re.search(r'^Flops: \S+', flops, re.M), flops
    params = re.search(r'^Params: (\S+)$', flops, re.M).group(1)
    report = json.loads(run(['tools/analysis/param_report.py', CONFIG, '--json']).stdout)
    assert params == _format_size(report['total']['total'])
    # a count that saw every layer's copy of the shared weights would not match
    assert params != _format_size(report['total']['stock_equivalent'])


def test_browse_dataset_writes_a_picture_per_training_image(tmp_path, data_root, options):
    out = tmp_path / 'browse'
    run([osp.join(MMDET_TOOLS, 'analysis_tools', 'browse_dataset.py'), CONFIG, '--not-show',
         '--output-dir', str(out), '--cfg-options', *options])
    from PIL import Image
    pictures = sorted(os.listdir(out))
    assert pictures == sorted(os.listdir(osp.join(data_root, 'train')))
    # the pipeline's 128 px resize, drawn enlarged by the config's visualizer
    from mmengine.config import Config
    scale = Config.fromfile(CONFIG).visualizer.get('scale', 1)
    assert Image.open(out / pictures[0]).size == (128 * scale, 128 * scale)


def imported_packages(path: str) -> set:
    """Top-level names of the absolute imports of a Python file."""
    names = set()
    for node in ast.walk(ast.parse(open(path).read())):
        if isinstance(node, ast.Import):
            names |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0:
            names.add(node.module)
    return names


def test_tools_extra_brings_what_mmdets_log_and_speed_tools_import():
    """analyze_logs.py and benchmark.py (through mmdet.utils.benchmark) import packages
    that the install does not bring: `pip install -e .[tools]` must."""
    setup = ast.parse(open(osp.join(ROOT, 'setup.py')).read())
    call = next(node for node in ast.walk(setup)
                if isinstance(node, ast.Call) and getattr(node.func, 'id', '') == 'setup')
    keywords = {k.arg: k.value for k in call.keywords}
    extras = ast.literal_eval(keywords['extras_require'])
    brought = {'torch', 'mmcv', 'mmdet', 'mmengine', 'numpy'} | set(
        ast.literal_eval(keywords['install_requires']))
    needed = set()
    for script in ('analyze_logs.py', 'benchmark.py'):
        imported = imported_packages(osp.join(MMDET_TOOLS, 'analysis_tools', script))
        for module in sorted(name for name in imported if name.startswith('mmdet.')):
            path = osp.join(osp.dirname(mmdet.__file__), *module.split('.')[1:]) + '.py'
            if osp.isfile(path):  # one level into mmdet's own modules
                imported |= imported_packages(path)
        needed |= {name.split('.')[0] for name in imported}
    third_party = {name for name in needed if name not in sys.stdlib_module_names}
    assert {'seaborn', 'psutil'} <= third_party  # what a user found missing
    assert third_party - brought - set(extras['tools']) == set()
    assert 'pandas' in extras['tools']  # seaborn's plots of the logs go through it
