"""Compression on the CPU toys: trained stock DINO -> LORS -> short fine-tune, several seeds.

For every seed it takes the stock toy DINO that ``run_experiments.py --plan detr-stacks``
trained (``work_dirs/experiments/dino/seed<S>/iter_500.pth``) and, for each variant of
the study (``--study``):

- ``ranks``: stacks, one rank everywhere, distillation (weight-space init);
- ``budget``: a parameter budget of the transformer with per-layer ranks, the
  weight-space init against the data-aware one (``--calibrate``) at the same budget,
  and the fine-tune with the shared weights held fixed for its first half;

1. ``tools/compress.py`` with the variant's options;
2. ``tools/test.py`` on the compressed checkpoint: AP before any training;
3. ``tools/train.py`` on the written config: the fine-tune of 20% of the original
   iterations (100 of 500) at a tenth of its lr; AP after it.

Then a table (AP right after compression, after the fine-tune, the stock model and LORS
trained from scratch with the same seed) and a plot of AP against transformer parameters.

    python tools/analysis/run_experiments.py --plan detr-stacks --seeds 0 1 2 --jobs 2
    python tools/analysis/compress_experiments.py --seeds 0 1 2 --jobs 2
    python tools/analysis/compress_experiments.py --seeds 0 1 2 --report-only \
        --doc docs/experiments/log.md   # the table also between its markers there
    python tools/analysis/compress_experiments.py --study budget --seeds 0 1 2 --jobs 2

Finished steps are skipped, so the script can be stopped and started again.
"""
import argparse
import glob
import json
import os
import os.path as osp
import re
import shlex
import subprocess
import sys
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from tools.analysis.run_experiments import (DETR_STACKS, check_doc_markers,  # noqa: E402
                                            mean_std, read_scalars, run_dir,
                                            run_env, threads_per_job)
from tools.upkeep.docs_tables import write_generated  # noqa: E402

# name -> compress.py options; 'scratch' names the LORS toy trained from scratch
# (a run of the detr-stacks plan) with the same stacks and rank, if there is one;
# 'against' the variant it is compared with, paired by seed.
RANKS = {
    'decoder r16': dict(options=['--stacks', 'decoder', '--rank', '16'],
                        scratch='lors-dino decoder'),
    'encoder+decoder r16': dict(options=['--stacks', 'decoder', 'encoder', '--rank', '16'],
                                scratch='lors-dino encoder+decoder'),
    'encoder+decoder r4': dict(options=['--stacks', 'decoder', 'encoder', '--rank', '4'],
                               scratch=None),
    'encoder+decoder r4 distill': dict(
        options=['--stacks', 'decoder', 'encoder', '--rank', '4', '--distill', '1.0'],
        scratch=None),
}
ENCDEC = ['--stacks', 'decoder', 'encoder']
CALIBRATE = ['--calibrate', '32']  # 256 training images (batches of 8)
# The toy's 2 encoder and 3 decoder layers keep >= 42.9% of the transformer at rank 1
# everywhere (the shared copies): 0.45 is the smallest budget round number above it.
BUDGET = {
    'budget 0.5': dict(options=[*ENCDEC, '--budget', '0.5'], scratch=None),
    'budget 0.5 calibrated': dict(options=[*ENCDEC, '--budget', '0.5', *CALIBRATE],
                                  scratch=None, against='budget 0.5'),
    'budget 0.45': dict(options=[*ENCDEC, '--budget', '0.45'], scratch=None),
    'budget 0.45 calibrated': dict(options=[*ENCDEC, '--budget', '0.45', *CALIBRATE],
                                   scratch=None, against='budget 0.45'),
    'budget 0.45 calibrated freeze-shared': dict(
        options=[*ENCDEC, '--budget', '0.45', *CALIBRATE, '--freeze-shared', '0.5'],
        scratch=None, against='budget 0.45 calibrated'),
}
STUDIES = {'ranks': RANKS, 'budget': BUDGET}
MARKERS = {'ranks': 'experiments:compress', 'budget': 'experiments:compress-budget'}
OUTS = {'ranks': 'docs/experiments/compress', 'budget': 'docs/experiments/compress-budget'}
STOCK = 'dino'
STOCK_CONFIG = DETR_STACKS[STOCK][0]  # the stock runs of plan detr-stacks


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--study', choices=sorted(STUDIES), default='ranks',
                        help='which variants (default: ranks)')
    parser.add_argument('--seeds', type=int, nargs='+', default=[0, 1, 2])
    parser.add_argument('--only', nargs='+',
                        choices=sorted(n for v in STUDIES.values() for n in v),
                        help='run only these variants of the study')
    parser.add_argument('--val-interval', type=int, default=50,
                        help='fine-tune iterations between validations')
    parser.add_argument('--stock-work-dir', default='work_dirs/experiments',
                        help='the work dir of run_experiments.py (stock and from-scratch '
                        'runs)')
    parser.add_argument('--work-dir', default='work_dirs/experiments_compress')
    parser.add_argument('--out', help='where the report goes (default '
                        f'per study: {OUTS})')
    parser.add_argument('--report-only', action='store_true')
    parser.add_argument('--doc', metavar='PATH',
                        help='also write the table between the <!-- MARKER:start --> '
                        f'and <!-- ...:end --> markers of this file ({MARKERS})')
    parser.add_argument('--jobs', type=int, default=1,
                        help='variants run at the same time (each gets cpu_count // jobs '
                        'threads)')
    parser.add_argument('--threads', type=int,
                        help='torch threads of each variant (default cpu_count // jobs)')
    args = parser.parse_args()
    args.variants = STUDIES[args.study]
    args.out = args.out or OUTS[args.study]
    unknown = sorted(set(args.only or []) - set(args.variants))
    if unknown:
        parser.error(f'--only {unknown}: not variants of --study {args.study}')
    return args


def stock_checkpoint(stock_work_dir: str, seed: int) -> str:
    directory = run_dir(stock_work_dir, STOCK, seed)
    path = osp.join(directory, 'iter_500.pth')
    if not osp.exists(path):
        raise SystemExit(f'no trained stock toy DINO for seed {seed}: {path} is missing; '
                         'train it first with python tools/analysis/run_experiments.py '
                         f'--plan detr-stacks --only dino --seeds {seed}')
    return path


def run_logged(command: List[str], log_path: str, threads: int) -> None:
    print(f'[{time.strftime("%H:%M:%S")}] {shlex.join(command)}', flush=True)
    env = run_env(threads)
    with open(log_path, 'w') as log:
        subprocess.run(command, cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT,
                       check=True)


def run_variant(name: str, seed: int, args: argparse.Namespace, threads: int) -> None:
    """Compress, evaluate, fine-tune one variant for one seed (finished steps skipped)."""
    directory = run_dir(args.work_dir, name, seed)
    os.makedirs(directory, exist_ok=True)
    config, checkpoint = osp.join(directory, 'lors.py'), osp.join(directory, 'lors.pth')
    python = sys.executable
    if not osp.exists(checkpoint):
        run_logged([python, 'tools/compress.py', STOCK_CONFIG,
                    stock_checkpoint(args.stock_work_dir, seed), '--out', directory,
                    '--name', 'lors', '--force', *args.variants[name]['options']],
                   osp.join(directory, 'compress.log'), threads)
    if not glob.glob(osp.join(directory, 'test', '*', '*.json')):
        run_logged([python, 'tools/test.py', config, checkpoint, '--work-dir',
                    osp.join(directory, 'test')], osp.join(directory, 'test.log'), threads)
    finetune = osp.join(directory, 'finetune')
    if not osp.exists(osp.join(finetune, 'finished.json')):
        start = time.time()
        os.makedirs(finetune, exist_ok=True)
        run_logged([python, 'tools/train.py', config, '--work-dir', finetune,
                    '--cfg-options', f'randomness.seed={seed}',
                    f'train_cfg.val_interval={args.val_interval}'],
                   osp.join(finetune, 'train.log'), threads)
        with open(osp.join(finetune, 'finished.json'), 'w') as f:
            json.dump(dict(name=name, seed=seed, seconds=time.time() - start), f)


def transformer_fraction(compress_log: str) -> float:
    """after/before of the 'transformer' row that tools/compress.py printed."""
    with open(compress_log) as f:
        match = re.search(r'^\s*transformer\s+([\d,]+)\s+([\d,]+)', f.read(), re.M)
    if match is None:
        raise ValueError(f'{compress_log} has no transformer parameter row')
    before, after = (int(group.replace(',', '')) for group in match.groups())
    return after / before


def final_ap(directory: str) -> Optional[float]:
    """The last validation mAP of a finished training run, None if the run has not
    finished (a run still training has validated only part way)."""
    if not osp.exists(osp.join(directory, 'finished.json')):
        return None
    _, metrics = read_scalars(directory)
    return metrics[max(metrics)]['coco/bbox_mAP'] if metrics else None


def test_ap(directory: str) -> float:
    with open(sorted(glob.glob(osp.join(directory, 'test', '*', '*.json')))[-1]) as f:
        return json.load(f)['coco/bbox_mAP']


def collect(args: argparse.Namespace) -> Dict[str, Dict[str, List[float]]]:
    """Per variant (and 'stock'): AP lists over the seeds that finished every step."""
    results: Dict[str, Dict[str, List[float]]] = defaultdict(lambda: defaultdict(list))
    for seed in args.seeds:
        stock = final_ap(run_dir(args.stock_work_dir, STOCK, seed))
        for name, variant in args.variants.items():
            directory = run_dir(args.work_dir, name, seed)
            if stock is None or not osp.exists(
                    osp.join(directory, 'finetune', 'finished.json')):
                continue
            row = results[name]
            row['seeds'].append(seed)
            row['fraction'].append(transformer_fraction(osp.join(directory,
                                                                 'compress.log')))
            row['compressed'].append(test_ap(directory))
            row['finetuned'].append(final_ap(osp.join(directory, 'finetune')))
            row['stock'].append(stock)
            row['gap'].append(row['finetuned'][-1] - stock)
            if variant['scratch']:
                scratch = final_ap(run_dir(args.stock_work_dir, variant['scratch'], seed))
                if scratch is not None:
                    row['scratch'].append(scratch)
    return results


def paired_rows(variants: Dict[str, dict], results) -> List[str]:
    """Each variant against the one it names in 'against', paired by seed: the mean
    difference of the AP right after compression and after the fine-tune, with
    95% intervals."""
    from lors_mmdet.diagnostics import paired_difference
    rows = []
    for name, variant in variants.items():
        other = variant.get('against')
        if other not in results or name not in results:
            continue
        seeds = sorted(set(results[name]['seeds']) & set(results[other]['seeds']))
        if not seeds:
            continue
        cells = []
        for key in ('compressed', 'finetuned'):
            ours = [results[name][key][results[name]['seeds'].index(s)] for s in seeds]
            theirs = [results[other][key][results[other]['seeds'].index(s)]
                      for s in seeds]
            d = paired_difference(ours, theirs)
            interval = f' [{d["low"]:+.3f}, {d["high"]:+.3f}]' if d['n'] > 1 else ''
            cells.append(f'{d["mean"]:+.3f}{interval}')
        rows.append(f'| {name} | {other} | {len(seeds)} | {cells[0]} | {cells[1]} |')
    if not rows:
        return []
    return ['', 'Paired by seed: mean difference of AP and its 95% Student-t interval.',
            '', '| variant | against | seeds | right after compression | after the '
            'fine-tune |', '|---|---|---|---|---|', *rows]


def report(args: argparse.Namespace, command: str) -> str:
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    results = collect(args)
    rows = []
    for name, row in results.items():
        scratch = mean_std(row['scratch']) if row['scratch'] else '-'
        rows.append(f"| {name} | {', '.join(map(str, row['seeds']))} | "
                    f"{row['fraction'][0]:.1%} | {mean_std(row['compressed'])} | "
                    f"{mean_std(row['finetuned'])} | {mean_std(row['stock'])} | "
                    f"{mean_std(row['gap'])} | {scratch} |")
    table = '\n'.join([
        f'Produced by `{command}`.', '',
        '| compressed toy DINO | seeds | transformer params vs stock | AP right after '
        'compression | AP after fine-tune (100 it.) | stock AP (500 it.) | fine-tuned - '
        'stock | LORS from scratch (500 it.) |', '|---|---|---|---|---|---|---|---|', *rows,
        *paired_rows(args.variants, results)])
    os.makedirs(args.out, exist_ok=True)
    with open(osp.join(args.out, 'results.md'), 'w') as f:
        f.write(table + '\n')
    print(table)

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for colour, (name, row) in enumerate(results.items()):
        x = [100 * f for f in row['fraction']]
        axes.scatter(x, row['compressed'], marker='x', color=f'C{colour}')
        axes.scatter(x, row['finetuned'], marker='o', color=f'C{colour}',
                     label=f'{name}: x after compression, o after fine-tune')
    stock = next(iter(results.values()))['stock'] if results else []
    axes.scatter([100] * len(stock), stock, marker='s', color='k', label='stock DINO')
    axes.set(xlabel='transformer parameters, % of stock', ylabel='COCO bbox mAP (val)',
             title='toy DINO compressed to LORS (one point per seed)')
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(osp.join(args.out, 'ap_vs_params.png'), dpi=110)
    print(f'wrote {osp.join(args.out, "results.md")} and '
          f'{osp.join(args.out, "ap_vs_params.png")}')
    return table


def main() -> None:
    args = parse_args()
    command = ('python tools/analysis/compress_experiments.py ' +
               shlex.join(sys.argv[1:]))
    marker = MARKERS[args.study]
    check_doc_markers(args.doc, marker)
    if not args.report_only:
        threads = threads_per_job(args.jobs, args.threads)
        names = args.only or list(args.variants)
        with ThreadPoolExecutor(max_workers=args.jobs) as pool:
            futures = [pool.submit(run_variant, name, seed, args, threads)
                       for seed in args.seeds for name in names]
            for future in futures:
                future.result()
    table = report(args, command)
    if args.doc:
        write_generated(args.doc, marker, table)
        print(f'wrote the table into {args.doc} ({marker})')


if __name__ == '__main__':
    main()
