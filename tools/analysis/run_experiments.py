"""Controlled experiments on the synthetic data set: stock vs LORS, several seeds.

Every run is ``tools/train.py CONFIG --resume --cfg-options randomness.seed=S ...`` in
its own work dir; finished runs are skipped and a stopped run resumes from its last
checkpoint, so the script can be stopped and started again.
Then it collects the logged losses and validation mAPs into a table and plots.

Each finished run is also kept, small, as ``<out>/<plans>/runs/<name>/seed<S>.json`` (its
``finished.json``, losses and validation APs), as soon as it ends: the report reads the
runs from there, so runs finished in earlier sessions, whose work dirs are gone, still
count, and are not trained again. Commit that folder with the report. A kept record is
never overwritten by other results. The kept runs name their commit: every run of a
report, kept or in the work dir, and the checkout that trains more must be at one commit
(a worktree of it), since paired runs from two versions of the code would not compare one
change; a kept run whose config or options differ from its plan entry is refused.

    python tools/analysis/run_experiments.py --plan families --seeds 0 1
    python tools/analysis/run_experiments.py --plan ablation --seeds 0
    python tools/analysis/run_experiments.py --plan detr-stacks --seeds 0 1 2
    python tools/analysis/run_experiments.py --report-only   # table + plots from finished runs
    python tools/analysis/run_experiments.py --plan detr-stacks --report-only \
        --doc docs/experiments/log.md   # the table also into the log

``--doc PATH`` writes the table of ``results.md`` also between the markers
``<!-- experiments:<plans joined by _>:start -->`` and ``...:end -->`` of PATH
(e.g. ``experiments:detr-stacks``); a file without them is refused before
anything runs.

``--jobs N`` trains N runs at a time, each with cpu_count // N threads: on a small CPU
machine these toy models gain little from a second thread, so two single-thread runs
side by side finish sooner than two runs one after the other.
"""
import argparse
import functools
import glob
import json
import os
import os.path as osp
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Callable, Dict, List, Optional, Tuple

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from lors_mmdet.diagnostics import logged_records, mean_std  # noqa: E402
TOY = {
    'adamixer': 'configs/adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py',
    'lors-adamixer': 'configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-toy_synthetic.py',
    'dino': 'configs/dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
    'lors-dino': 'configs/lors_dino/lors-dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
    'deformable-detr':
    'configs/deformable_detr/deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py',
    'lors-deformable-detr':
    'configs/lors_deformable_detr/lors-deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py',
    'sparse-rcnn': 'configs/sparse_rcnn/sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py',
    'lors-sparse-rcnn':
    'configs/lors_sparse_rcnn/lors-sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py',
}
# Ablation of LORS-AdaMixer: which private parts sit on top of the shared ones.
# A branch is switched off by never updating the factor that starts at zero (lr_mult 0):
# the adaptive residual L Z(q) R stays 0 while its core generator does, the static
# residual B A while B does. The model is then exactly the one without that branch
# (the frozen tensors' gradients still count in the clipped gradient norm).
ABLATION = {
    'lors-adamixer': [],
    'lors-adamixer static-only':
    ['optim_wrapper.paramwise_cfg.custom_keys.lors_core_generator.lr_mult=0'],
    'lors-adamixer adaptive-only': ['optim_wrapper.paramwise_cfg.custom_keys.lors_B.lr_mult=0'],
    'lors-adamixer rank-2': ['model.lors.decoder.rank=2'],
    'lors-adamixer rank-8': ['model.lors.decoder.rank=8'],
    # the published model with the library's nn.Linear-style factor init (the
    # init LORS-AdaMixer used here before it followed the published one)
    'lors-adamixer linear-init': ['model.lors.decoder.factor_init=linear',
                                  'model.lors.decoder.adaptive.factor_init=linear'],
    # static adaptive factors shared by the mixing groups (not published)
    'lors-adamixer shared-factors':
    ['model.lors.decoder.adaptive.per_group_factors=false'],
}
# LORS-DINO: encoder + decoder sharing vs decoder only vs stock.
DETR_STACKS = {
    'dino': (TOY['dino'], []),
    'lors-dino decoder': (TOY['lors-dino'], []),
    'lors-dino encoder+decoder': (
        'configs/lors_dino/lors-encdec-dino-4scale_r18-tiny_1xb8-toy_synthetic.py', []),
}
# The accuracy study (docs/accuracy.md): the paper's 6 stages, K_i = [1, 1, 2, 2, 3, 3].
# what the 6-stage toys' backbone starts from, as --cfg-options of a from-scratch toy
PRETRAINED_TOY_BACKBONE = [
    'model.backbone.init_cfg._delete_=True', 'model.backbone.init_cfg.type=Pretrained',
    'model.backbone.init_cfg.checkpoint=checkpoints/toy/resnet18-tiny_shapes.pth']
ADAMIXER_6 = 'configs/adamixer/adamixer-6stage_r18-tiny_1xb16-toy_synthetic.py'
LORS_ADAMIXER_6 = 'configs/lors_adamixer/lors-adamixer-6stage_r18-tiny_1xb16-toy_synthetic.py'
ADAMIXER_6STAGE = {
    'adamixer 6-stage': (ADAMIXER_6, []),
    'lors-adamixer 6-stage': (LORS_ADAMIXER_6, []),
}
# the same pair at other learning rates (the toy's 1e-3 is in the grid's middle)
ADAMIXER_6STAGE_LR = {
    f'{name} lr {lr}': (config, [f'optim_wrapper.optimizer.lr={lr}'])
    for lr in ('5e-4', '2e-3') for name, config in (('adamixer 6-stage', ADAMIXER_6),
                                                   ('lors-adamixer 6-stage', LORS_ADAMIXER_6))
}
# which private branch of the 6-stage LORS-AdaMixer matters (as ABLATION below)
ADAMIXER_6STAGE_ABLATION = {
    'lors-adamixer 6-stage': (LORS_ADAMIXER_6, []),
    'lors-adamixer 6-stage static-only':
    (LORS_ADAMIXER_6, ['optim_wrapper.paramwise_cfg.custom_keys.lors_core_generator.lr_mult=0']),
    'lors-adamixer 6-stage adaptive-only':
    (LORS_ADAMIXER_6, ['optim_wrapper.paramwise_cfg.custom_keys.lors_B.lr_mult=0']),
}
# LORS-DINO encoder + decoder: is its gap the rank or the sharing?
DETR_RANK = {
    'dino': DETR_STACKS['dino'],
    'lors-dino encoder+decoder': DETR_STACKS['lors-dino encoder+decoder'],
    **{f'lors-dino encoder+decoder rank {rank}': (
        DETR_STACKS['lors-dino encoder+decoder'][0],
        [f'model.lors.encoder.rank={rank}', f'model.lors.decoder.rank={rank}'])
       for rank in (32, 64, 'full')},
    # the start instead of the capacity: shared = the layers' mean and private =
    # the SVD of each layer's rest, from the stock init (exactly the stock
    # model's independently drawn layers at rank 'full') instead of every layer
    # starting as layer 0
    **{f'lors-dino encoder+decoder{suffix} dense-init': (
        DETR_STACKS['lors-dino encoder+decoder'][0],
        [*options, 'model.lors.encoder.init=dense', 'model.lors.decoder.init=dense'])
       for suffix, options in (
           ('', []),
           (' rank full', ['model.lors.encoder.rank=full', 'model.lors.decoder.rank=full']))},
}
# LORS-DINO encoder + decoder vs stock at lower learning rates (the toys' AdamW 1e-3 is
# 10x DINO's COCO lr): is the gap of the factored training the learning rate? 1e-3 (the
# configs' own) is restated so that the whole grid trains at one commit.
DETR_LR_GRID = ('2.5e-4', '5e-4', '1e-3')
DETR_LR = {
    f'{name} lr {lr}': (DETR_STACKS[name][0], [f'optim_wrapper.optimizer.lr={lr}'])
    for lr in DETR_LR_GRID for name in ('dino', 'lors-dino encoder+decoder')
}
# The private factors B of the configs' fresh start (B = 0, A kaiming-uniform) move each
# layer's weight by about sqrt(rank) * rms(A) = 4 * 0.036 ~ 1/7 of the step a stock layer's
# weight takes at the same lr (rank 16, fan-in 256): B at 8x the lr lets the layers grow
# apart at a stock layer's pace (an option, like LoRA+'s faster B; never a config default).
DETR_PRIVATE_LR = {
    'dino lr 1e-3': DETR_LR['dino lr 1e-3'],
    'lors-dino encoder+decoder lr 1e-3': DETR_LR['lors-dino encoder+decoder lr 1e-3'],
    'lors-dino encoder+decoder lr 1e-3 private-lr x8': (
        DETR_STACKS['lors-dino encoder+decoder'][0],
        ['optim_wrapper.optimizer.lr=1e-3',
         'optim_wrapper.paramwise_cfg.custom_keys.lors_B.lr_mult=8']),
}
# Which stack costs LORS-DINO encoder + decoder its AP at the toy lr: each one alone, at
# one commit with the stock and encoder + decoder runs.
DETR_WHICH_STACK = {
    name: DETR_PRIVATE_LR[name]
    for name in ('dino lr 1e-3', 'lors-dino encoder+decoder lr 1e-3')
}
DETR_WHICH_STACK['lors-dino decoder lr 1e-3'] = (
    DETR_STACKS['lors-dino decoder'][0], ['optim_wrapper.optimizer.lr=1e-3'])
DETR_WHICH_STACK['lors-dino encoder lr 1e-3'] = (
    DETR_STACKS['lors-dino encoder+decoder'][0],
    ['optim_wrapper.optimizer.lr=1e-3', 'model.lors.decoder=None'])
# Does the LORS-DINO encoder + decoder gap shrink with the budget? (-9.8 AP at 250
# iterations, -3.6 at 500.) The toy's schedule stretched: the lr step at 80% as in the base.
DETR_BUDGET = {
    f'{name} {iters} iterations': (DETR_STACKS[name][0], [
        f'train_cfg.max_iters={iters}', f'param_scheduler.1.end={iters}',
        f'param_scheduler.1.milestones=[{int(iters * 0.8)}]'])
    for iters in (1000, 2000) for name in ('dino', 'lors-dino encoder+decoder')
}
# A LORS decoder's last layer stops refining (plan detr-which-stack, --layer-ap): is it
# because that layer shares its weights with the others? The decoder alone (one stack to
# read) with its last layer in a group of its own (a stock layer trained as W + B A), and
# with the private capacity growing with depth as the paper's K_i = [1, 1, 2, 2, 3, 3].
DETR_LAST_LAYER = {
    name: DETR_WHICH_STACK[name] for name in ('dino lr 1e-3', 'lors-dino decoder lr 1e-3')}
DETR_LAST_LAYER['lors-dino decoder lr 1e-3 last layer own'] = (
    DETR_STACKS['lors-dino decoder'][0],
    ['optim_wrapper.optimizer.lr=1e-3', 'model.lors.decoder.layer_groups=[2,1]'])
DETR_LAST_LAYER['lors-dino decoder lr 1e-3 terms 1-2-3'] = (
    DETR_STACKS['lors-dino decoder'][0],
    ['optim_wrapper.optimizer.lr=1e-3', 'model.lors.decoder.num_terms=[1,2,3]'])
# The same with a LORS encoder too (the -4.2 AP pair): is what is left of the gap then the
# LORS encoder's alone?
DETR_LAST_LAYER_BOTH = {
    name: DETR_WHICH_STACK[name]
    for name in ('dino lr 1e-3', 'lors-dino encoder+decoder lr 1e-3')}
DETR_LAST_LAYER_BOTH['lors-dino encoder+decoder lr 1e-3 last layer own'] = (
    DETR_STACKS['lors-dino encoder+decoder'][0],
    ['optim_wrapper.optimizer.lr=1e-3', 'model.lors.decoder.layer_groups=[2,1]'])
PLANS = {
    'families': {name: (TOY[name], []) for name in TOY if 'sparse-rcnn' not in name},
    'detr-stacks': DETR_STACKS,
    'ablation': {name: (TOY['lors-adamixer'], options) for name, options in ABLATION.items()},
    'adamixer-6stage': ADAMIXER_6STAGE,
    'adamixer-6stage-lr': ADAMIXER_6STAGE_LR,
    'adamixer-6stage-ablation': ADAMIXER_6STAGE_ABLATION,
    'detr-rank': DETR_RANK,
    'detr-lr': DETR_LR,
    'detr-private-lr': DETR_PRIVATE_LR,
    'detr-which-stack': DETR_WHICH_STACK,
    'detr-budget': DETR_BUDGET,
    'detr-last-layer': DETR_LAST_LAYER,
    'detr-last-layer-encoder+decoder': DETR_LAST_LAYER_BOTH,
    'sparse-rcnn': {name: (TOY[name], []) for name in ('sparse-rcnn', 'lors-sparse-rcnn')},
    # the 3-stage, from-scratch AdaMixer pair whose -8.1 AP over 3 seeds (2026-11-30) began
    # the accuracy study, trained again paired by seed at one commit
    'adamixer-3stage': {name: (TOY[name], []) for name in ('adamixer', 'lors-adamixer')},
    # the same pair from the pretrained toy backbone (as the 6-stage pair and COCO models
    # start): is the 3-stage gap the from-scratch start?
    'adamixer-3stage-pretrained': {
        f'{name} pretrained': (TOY[name], PRETRAINED_TOY_BACKBONE)
        for name in ('adamixer', 'lors-adamixer')},
    # and with its last stage on its own weight (stages 0 and 1 share): is the gap, which
    # sits in the last stage, the sharing of that stage?
    'adamixer-3stage-last-stage-own': {
        'adamixer pretrained': (TOY['adamixer'], PRETRAINED_TOY_BACKBONE),
        'lors-adamixer pretrained last stage own': (
            TOY['lors-adamixer'],
            PRETRAINED_TOY_BACKBONE + ['model.lors.decoder.layer_groups=[2,1]'])},
}
# the run(s) each run is paired with in the report; by default the first run of its plan
PAIRED_WITH = {
    'lors-dino encoder+decoder lr 1e-3 private-lr x8': (
        'dino lr 1e-3', 'lors-dino encoder+decoder lr 1e-3'),
    **{f'lors-adamixer 6-stage lr {lr}': f'adamixer 6-stage lr {lr}'
       for lr in ('5e-4', '2e-3')},
    **{f'lors-dino encoder+decoder lr {lr}': f'dino lr {lr}' for lr in DETR_LR_GRID},
    **{f'lors-dino encoder+decoder {iters} iterations': f'dino {iters} iterations'
       for iters in (1000, 2000)},
    **{f'lors-dino decoder lr 1e-3 {variant}': ('dino lr 1e-3', 'lors-dino decoder lr 1e-3')
       for variant in ('last layer own', 'terms 1-2-3')},
    'lors-dino encoder+decoder lr 1e-3 last layer own': (
        'dino lr 1e-3', 'lors-dino encoder+decoder lr 1e-3'),
}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--plan', choices=sorted(PLANS), action='append',
                        help='experiment plan(s) to run (default: families)')
    parser.add_argument('--only', nargs='+', help='run only these names of the plan')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1])
    parser.add_argument('--val-interval', type=int, default=200,
                        help='iterations between validations (the mAP curve)')
    parser.add_argument('--work-dir', default='work_dirs/experiments')
    parser.add_argument('--out', default='docs/experiments', help='tables and plots')
    parser.add_argument('--report-only', action='store_true')
    parser.add_argument('--doc', metavar='PATH',
                        help='also write the table between the '
                        '<!-- experiments:PLANS:start/end --> markers of this file')
    parser.add_argument('--jobs', type=int, default=1,
                        help='runs trained at the same time (each gets cpu_count // jobs '
                        'threads)')
    parser.add_argument('--threads', type=int,
                        help='torch threads of each run (default cpu_count // jobs): '
                        'e.g. 1 for one run beside other work, as in runs with --jobs 2')
    return parser.parse_args()


def check_doc_markers(doc: Optional[str], marker: str) -> None:
    """Exit naming the file unless ``doc`` (if given) holds ``marker``'s pair, before
    anything runs."""
    if doc:
        from tools.upkeep.docs_tables import check_generated_markers
        try:
            check_generated_markers(doc, marker)
        except (OSError, ValueError) as error:
            raise SystemExit(f'--doc: {error}')


def threads_per_job(jobs: int, threads: Optional[int] = None) -> int:
    """Torch threads of each of ``jobs`` runs side by side: ``threads`` (``--threads``)
    if given, else ``cpu_count // jobs``."""
    if jobs < 1:
        raise SystemExit(f'--jobs must be at least 1, got {jobs}')
    if threads is not None:
        if threads < 1:
            raise SystemExit(f'--threads must be at least 1, got {threads}')
        return threads
    return max(1, (os.cpu_count() or 1) // jobs)


def run_folder(name: str) -> str:
    """The folder of run ``name`` (its seeds below it), in a work dir and among kept runs."""
    return name.replace(' ', '_')


def run_dir(work_dir: str, name: str, seed) -> str:
    return osp.join(work_dir, run_folder(name), f'seed{seed}')


def source_commit() -> str:
    """The commit the runs are trained from; a checkout with changes is refused, since
    its runs could not be told apart from the commit's. Changes under ``docs/`` do not
    count: the reports (``--out docs/experiments``) are written there."""
    def git(*args: str) -> str:
        return subprocess.run(['git', *args], cwd=ROOT, capture_output=True, text=True,
                              check=True).stdout.strip()
    if git('status', '--porcelain', '--untracked-files=no', '--', '.', ':(exclude)docs'):
        raise SystemExit(f'{ROOT} has uncommitted changes: commit them (or train from a '
                         'clean worktree of the commit) so that every run names its commit')
    return git('rev-parse', 'HEAD')


def check_same_commit(directory: str, commit: str) -> None:
    """Record ``commit`` in a new run dir; refuse to resume a run begun at another one
    (a resumed run would mix two versions of the code)."""
    path = osp.join(directory, 'commit.txt')
    if not osp.exists(path):
        with open(path, 'w') as f:
            f.write(commit + '\n')
        return
    with open(path) as f:
        begun = f.read().strip()
    if begun != commit:
        raise SystemExit(f'{directory} was begun at commit {begun}, this checkout is at '
                         f'{commit}: resume it from a worktree of {begun}, or use another '
                         '--work-dir')


SECONDS_EVERY = 30.0


def wait_counting_seconds(process: subprocess.Popen, seconds_file: str, before: float,
                          every: float = SECONDS_EVERY) -> int:
    """Wait for ``process``, keeping ``seconds_file`` at ``before`` plus the seconds waited,
    rewritten every ``every`` seconds: a run stopped by a killed session (no ``finally``
    runs) keeps its time but for the last interval. Returns the return code."""
    start = time.time()

    def record() -> None:
        try:
            with open(seconds_file + '.tmp', 'w') as f:
                f.write(str(before + time.time() - start))
            os.replace(seconds_file + '.tmp', seconds_file)
        except OSError as error:  # bookkeeping only: never abandon the training
            print(f'could not record the seconds in {seconds_file}: {error}', flush=True)

    try:
        while True:
            try:
                return process.wait(timeout=every)
            except subprocess.TimeoutExpired:
                record()
    finally:
        record()


def run_env(threads: int) -> Dict[str, str]:
    """The environment of a training run: ``threads`` OpenMP threads, and this checkout
    first on ``PYTHONPATH``, so that a worktree's runs train the worktree's ``lors_mmdet``
    (the commit they record), not the one ``pip install -e`` points at."""
    path = os.environ.get('PYTHONPATH')
    return dict(os.environ, OMP_NUM_THREADS=str(threads),
                PYTHONPATH=ROOT + (os.pathsep + path if path else ''))


def train(name: str, config: str, options: List[str], seed: int, directory: str,
          val_interval: int, threads: int) -> None:
    command = [sys.executable, 'tools/train.py', config, '--work-dir', directory,
               '--resume', '--cfg-options', f'randomness.seed={seed}',
               f'train_cfg.val_interval={val_interval}',
               # a checkpoint at every validation: a stopped run resumes from the last
               # one, and diagnose_run.py reads the updates between them
               f'default_hooks.checkpoint.interval={val_interval}', *options]
    print(f'[{time.strftime("%H:%M:%S")}] {name} seed {seed}: {" ".join(command)}',
          flush=True)
    start = time.time()
    env = run_env(threads)
    # the seconds of earlier, stopped attempts of this run (resumed below)
    seconds_file = osp.join(directory, 'seconds_before_resume.txt')
    before = float(open(seconds_file).read()) if osp.exists(seconds_file) else 0.0
    with open(osp.join(directory, 'train.log'), 'a') as log:
        process = subprocess.Popen(command, cwd=ROOT, env=env, stdout=log,
                                   stderr=subprocess.STDOUT)
        returncode = wait_counting_seconds(process, seconds_file, before)
    if returncode:
        raise subprocess.CalledProcessError(returncode, command)
    with open(osp.join(directory, 'commit.txt')) as f:
        commit = f.read().strip()
    with open(osp.join(directory, 'finished.json'), 'w') as f:
        json.dump(dict(name=name, config=config, options=options, seed=seed,
                       threads=threads, commit=commit, seconds=before + time.time() - start), f)


def read_scalars(directory: str) -> Tuple[Dict[int, float], Dict[int, dict]]:
    """(loss per logged iteration, COCO metrics per validated iteration)."""
    losses, metrics = {}, {}
    last_iter = 0
    for record in logged_records(directory):
        if 'loss' in record:
            losses[record['iter']] = record['loss']
            last_iter = record['iter']
        if 'coco/bbox_mAP' in record:
            # mmengine writes the epoch (0 for iteration-based loops) as the step of a
            # validation; the records are in time order, so the validation belongs to
            # the last training iteration logged
            metrics[last_iter] = record
    return losses, metrics


AP_KEYS = ('coco/bbox_mAP', 'coco/bbox_mAP_50', 'coco/bbox_mAP_75')


def record_path(out: str, name: str, seed) -> str:
    """Where the kept record of run ``name``, seed ``seed`` lives under the report's
    folder ``out``."""
    return osp.join(out, 'runs', run_folder(name), f'seed{seed}.json')


def run_record(directory: str) -> dict:
    """What the report needs of a finished run dir: its ``finished.json`` plus
    ``losses`` {iteration: loss} and ``metrics`` {iteration: {AP key: value}}."""
    record = read_json(osp.join(directory, 'finished.json'))
    losses, metrics = read_scalars(directory)
    record['losses'] = losses
    record['metrics'] = {it: {key: values[key] for key in AP_KEYS if key in values}
                         for it, values in metrics.items()}
    return record


RECORD_KEYS = ('name', 'config', 'options', 'commit', 'seconds', 'losses', 'metrics')


def checked_record(record: dict, where: str) -> dict:
    """``record`` (a run's ``finished.json`` with its losses and metrics, or a kept copy),
    its iterations as ints, after checking it has every field the report reads; refused
    naming ``where`` if not."""
    try:
        missing = [key for key in RECORD_KEYS if key not in record]
        if missing:
            raise KeyError(f'no {", ".join(missing)}')
        record['losses'] = {int(it): float(v) for it, v in record['losses'].items()}
        record['metrics'] = {int(it): {key: float(values[key]) for key in AP_KEYS}
                             for it, values in record['metrics'].items()}
        float(record['seconds'])
    except (ValueError, KeyError, AttributeError, TypeError) as error:
        raise SystemExit(f'{where}: not a run record of run_experiments.py (expected '
                         f'{", ".join(RECORD_KEYS)}; "losses" and "metrics" by iteration, '
                         f'the metrics with {", ".join(AP_KEYS)}): {error!r}')
    return record


def read_json(path: str) -> dict:
    """The JSON object in ``path`` (a kept record or a run's ``finished.json``); a damaged
    file is refused by name."""
    try:
        with open(path) as f:
            record = json.load(f)
    except ValueError as error:
        raise SystemExit(f'{path}: not a run record of run_experiments.py (not JSON): '
                         f'{error}')
    if not isinstance(record, dict):
        raise SystemExit(f'{path}: not a run record of run_experiments.py (expected a '
                         f'JSON object, found {type(record).__name__})')
    return record


def read_record(path: str) -> dict:
    """The kept run record in ``path`` (:func:`checked_record`)."""
    return checked_record(read_json(path), path)


def seed_of(path: str, suffix: str = '') -> int:
    """The seed of a kept record or run dir ``path``, named ``seed<integer><suffix>``;
    refused by name otherwise."""
    name = osp.basename(path)
    seed = name[len('seed'):len(name) - len(suffix)]
    if not (name.startswith('seed') and name.endswith(suffix) and seed.isdigit()):
        raise SystemExit(f'{path}: a run is named seed<integer>{suffix}')
    return int(seed)


def read_kept(out: str) -> Dict[str, Dict[int, dict]]:
    """{run folder: {seed: record}} of every run kept under ``out``, whatever run names
    the command line selects (they are all paired with each other)."""
    kept = defaultdict(dict)
    for path in sorted(glob.glob(osp.join(out, 'runs', '*', 'seed*.json'))):
        seed = seed_of(path, '.json')
        kept[osp.basename(osp.dirname(path))][seed] = read_record(path)
    return dict(kept)


def finished_runs(plans: Dict[str, Tuple[str, List[str]]], work_dir: str
                  ) -> Dict[Tuple[str, int], str]:
    """{(run name, seed): run dir} of the finished runs of ``plans`` in ``work_dir``."""
    runs = {}
    for name in plans:
        for path in sorted(glob.glob(osp.join(run_dir(work_dir, name, '*'),
                                              'finished.json'))):
            directory = osp.dirname(path)
            runs[name, seed_of(directory)] = directory
    return runs


def check_one_commit(records: List[Tuple[str, dict]], checkout: Optional[str] = None
                     ) -> None:
    """Refuse runs that would be paired across commits: every one of ``records``
    ((path, record) of kept runs and finished run dirs) must name one commit, and the
    ``checkout`` that is to train more (if given) that commit too. A record without a
    commit (from before ``run_experiments.py`` recorded them) is refused."""
    first: Dict[str, str] = {}  # commit -> the first record naming it
    for path, record in records:
        if not record.get('commit'):
            raise SystemExit(f'{path} records no commit (trained before run_experiments.py '
                             'recorded commits), so it cannot be paired with other runs: '
                             'train it again')
        first.setdefault(record['commit'], path)
    if len(first) > 1:
        (one, one_at), (other, other_at) = list(first.items())[:2]
        raise SystemExit(f'{other_at} was trained at commit {other}, {one_at} at {one}: the '
                         'runs of one report are paired, so they come from one commit; '
                         'report each commit into its own --out')
    if checkout and first and checkout not in first:
        (commit, at), = first.items()
        raise SystemExit(f'{at} was trained at commit {commit}, this checkout is at '
                         f'{checkout}: train from a worktree of {commit}, or report into '
                         'another --out')


def check_matches_plan(record: dict, spec: Tuple[str, List[str]], name: str,
                       where: str) -> None:
    """Refuse a run whose config or options are not those ``spec`` (its plan entry)
    names now: a run of another variant would be reported under ``name``."""
    config, options = spec
    if (record.get('config'), list(record.get('options') or [])) != (config, list(options)):
        raise SystemExit(f'{where} was trained with {record.get("config")} '
                         f'{record.get("options")}, the plan names {name!r} {config} '
                         f'{options}: report it into another --out')


def check_kept_match_plans(plans: Dict[str, Tuple[str, List[str]]],
                           kept: Dict[str, Dict[int, dict]], out: str) -> None:
    """:func:`check_matches_plan` for every kept run of ``plans``."""
    for name, spec in plans.items():
        for seed, record in kept.get(run_folder(name), {}).items():
            check_matches_plan(record, spec, name, record_path(out, name, seed))


def keep_record(out: str, name: str, seed: int, directory: str,
                spec: Tuple[str, List[str]]) -> None:
    """Keep the record of finished run dir ``directory`` (run ``name`` of plan entry
    ``spec``, seed ``seed``) as ``record_path(out, name, seed)``, written atomically (a
    killed report leaves the old file or the new one). A run of another config or
    options than ``spec``, or an existing record of other results, is refused by name;
    a kept record is never overwritten."""
    where = osp.join(directory, 'finished.json')
    record = checked_record(run_record(directory), where)
    check_matches_plan(record, spec, name, where)
    target = record_path(out, name, seed)
    if osp.exists(target):
        kept = read_record(target)
        if (kept['metrics'], kept['commit']) != (record['metrics'], record['commit']):
            raise SystemExit(f'{directory} and the kept {target} are both {name} seed '
                             f'{seed}, with other results or commits: remove the one that '
                             'is wrong, or report into another --out')
        return
    os.makedirs(osp.dirname(target), exist_ok=True)
    with open(target + '.tmp', 'w') as f:
        json.dump(record, f, indent=1)
    os.replace(target + '.tmp', target)


def finished_aps(kept: Dict[str, Dict[int, dict]], name: str) -> Dict[int, Dict[int, float]]:
    """{seed: {iteration: val AP}} of the kept runs of ``name``."""
    return {seed: {it: values['coco/bbox_mAP'] for it, values in record['metrics'].items()}
            for seed, record in kept.get(run_folder(name), {}).items()}


def paired_table(plans: Dict[str, Tuple[str, List[str]]],
                 kept: Dict[str, Dict[int, dict]]) -> str:
    """Every run of the plan against its first (the baseline) or the run(s)
    ``PAIRED_WITH`` names, paired by seed at every
    validated iteration: mean +- std of both, the mean paired difference and its 95%
    interval. Empty when fewer than two runs of the plan have finished seeds."""
    from lors_mmdet.diagnostics import paired_difference
    names = list(plans)
    rows = []
    for name in names[1:]:
        against_all = PAIRED_WITH.get(name, names[0])
        for against in (against_all, ) if isinstance(against_all, str) else against_all:
            if name == against or against not in plans:
                continue
            baseline = finished_aps(kept, against)
            treated = finished_aps(kept, name)
            seeds = sorted(set(baseline) & set(treated))
            if not seeds:
                continue
            iterations = sorted(set.intersection(*(set(baseline[s]) & set(treated[s])
                                                   for s in seeds)))
            for it in iterations:
                ours = [treated[s][it] for s in seeds]
                theirs = [baseline[s][it] for s in seeds]
                d = paired_difference(ours, theirs)
                interval = (f'[{d["low"]:+.3f}, {d["high"]:+.3f}]' if d['n'] > 1 else '-')
                rows.append(f'| {name} | {against} | {it} | {len(seeds)} | '
                            f'{mean_std(ours)} | {mean_std(theirs)} | {d["mean"]:+.3f} | '
                            f'{interval} |')
    if not rows:
        return ''
    return '\n'.join([
        'Paired by seed (same seeds, same data order), val AP at each validated '
        'iteration; the interval is the 95% Student-t interval of the mean paired '
        'difference.', '',
        '| run | against | iteration | seeds | AP | AP of the other | mean difference | '
        '95% interval |',
        '|---|---|---|---|---|---|---|---|', *rows])


def report(plans: Dict[str, Tuple[str, List[str]]], out: str, command: str) -> str:
    """Write ``results.md`` and ``curves.png`` into ``out`` from the runs kept there;
    return the table."""
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    os.makedirs(out, exist_ok=True)
    kept = read_kept(out)
    check_kept_match_plans(plans, kept, out)
    rows, curves = [], defaultdict(list)
    for name in plans:
        final = defaultdict(list)
        for seed, record in sorted(kept.get(run_folder(name), {}).items()):
            losses, metrics = record['losses'], record['metrics']
            if not metrics:
                continue
            last = metrics[max(metrics)]
            for key in AP_KEYS:
                final[key].append(last[key])
            final['minutes'].append(record['seconds'] / 60)
            curves[name].append((losses, metrics))
        if final:
            rows.append(f"| {name} | {len(final['minutes'])} | "
                        f"{mean_std(final['coco/bbox_mAP'])} | "
                        f"{mean_std(final['coco/bbox_mAP_50'])} | "
                        f"{mean_std(final['coco/bbox_mAP_75'])} | "
                        f"{', '.join(f'{ap:.3f}' for ap in final['coco/bbox_mAP'])} | "
                        f"{sum(final['minutes']) / len(final['minutes']):.1f} |")
    table = '\n'.join([
        f'Produced by `{command}`.', '',
        '| run | seeds | AP | AP50 | AP75 | AP of each seed | train minutes / run |',
        '|---|---|---|---|---|---|---|', *rows])
    paired = paired_table(plans, kept)
    if paired:
        table += '\n\n' + paired
    with open(osp.join(out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print(table)

    figure, (loss_axes, map_axes) = plt.subplots(1, 2, figsize=(12, 4.5))
    for colour, (name, runs) in enumerate(curves.items()):
        for i, (losses, metrics) in enumerate(runs):  # every seed of a run in one colour
            style = dict(label=name if i == 0 else None, alpha=0.8, color=f'C{colour}',
                         linestyle='--' if name.startswith('lors') else '-')
            loss_axes.plot(sorted(losses), [losses[k] for k in sorted(losses)], **style)
            map_axes.plot(sorted(metrics), [metrics[k]['coco/bbox_mAP'] for k in
                                            sorted(metrics)], marker='o', **style)
    loss_axes.set(xlabel='iteration', ylabel='training loss', title='training loss')
    map_axes.set(xlabel='iteration', ylabel='COCO bbox mAP', title='val mAP (synthetic)')
    loss_axes.legend(fontsize=7)
    map_axes.legend(fontsize=7)
    figure.suptitle(command, fontsize=8)
    figure.tight_layout()
    figure.savefig(osp.join(out, 'curves.png'), dpi=110)
    print(f'wrote {osp.join(out, "results.md")} and {osp.join(out, "curves.png")}')
    return table


def train_all(todo: List[Tuple[str, str, List[str], int, str]], out: str, jobs: int,
              train_one: Callable[..., None]) -> None:
    """Train the runs ``todo`` ((name, config, options, seed, run dir) each), ``jobs`` at
    a time, with ``train_one(name, config, options, seed, directory)``; each run's record
    is kept under ``out`` as soon as that run ends, so a session stopped later, or another
    run's failure, loses none of the finished ones. A failed run raises after the others
    end."""
    def train_and_keep(name: str, config: str, options: List[str], seed: int,
                       directory: str) -> None:
        train_one(name, config, options, seed, directory)
        keep_record(out, name, seed, directory, (config, options))

    with ThreadPoolExecutor(max_workers=jobs) as pool:
        futures = [pool.submit(train_and_keep, *run) for run in todo]
        for future in futures:
            future.result()


def main() -> None:
    args = parse_args()
    plan_names = args.plan or ['families']
    plans = {name: spec for plan in plan_names for name, spec in PLANS[plan].items()
             if not args.only or name in args.only}
    command = 'python tools/analysis/run_experiments.py ' + shlex.join(sys.argv[1:])
    marker = 'experiments:' + '_'.join(plan_names)
    check_doc_markers(args.doc, marker)
    out = osp.join(args.out, '_'.join(plan_names))
    kept = read_kept(out)
    check_kept_match_plans(plans, kept, out)
    done = finished_runs(plans, args.work_dir)
    records = [(record_path(out, name, seed), record) for name, seeds in kept.items()
               for seed, record in seeds.items()]
    for (name, _), directory in done.items():
        path = osp.join(directory, 'finished.json')
        record = read_json(path)
        check_matches_plan(record, plans[name], name, path)
        records.append((path, record))
    commit = None
    if not args.report_only:
        threads = threads_per_job(args.jobs, args.threads)
        commit = source_commit()
    check_one_commit(records, commit)
    for (name, seed), directory in done.items():
        keep_record(out, name, seed, directory, plans[name])
    if not args.report_only:
        todo = [(name, config, options, seed, run_dir(args.work_dir, name, seed))
                for seed in dict.fromkeys(args.seeds)
                for name, (config, options) in plans.items()
                if (name, seed) not in done and seed not in kept.get(run_folder(name), {})]
        for *_, directory in todo:  # every resumed run checked before any trains
            os.makedirs(directory, exist_ok=True)
            check_same_commit(directory, commit)
        train_all(todo, out, args.jobs, functools.partial(
            train, val_interval=args.val_interval, threads=threads))
    table = report(plans, out, command)
    if args.doc:
        from tools.upkeep.docs_tables import write_generated
        write_generated(args.doc, marker, table)
        print(f'wrote the table into {args.doc} ({marker})')


if __name__ == '__main__':
    main()
