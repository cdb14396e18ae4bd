"""Diagnostics of one (LORS-)AdaMixer training run, from its checkpoints.

    python tools/analysis/diagnose_run.py work_dirs/study6/lors-adamixer_6-stage/seed0

For every ``iter_*.pth`` of the run: weight and gradient norms per decoder parameter
group, each stage's loss on one training batch, a LORS decoder's private residual
sizes; the update norms between consecutive checkpoints; with ``--stage-ap`` the AP of
each stage's own predictions at the last checkpoint. Written to ``diagnostics.json`` in
the run dir; a run that has one is skipped (``--force`` recomputes). ``--summary FILE``
writes markdown tables of all the given runs, mean over the seeds of each model.
See lors_mmdet/diagnostics.py for the definitions.

``--residuals`` (any detector with LORS stacks, e.g. LORS-DINO) prints instead, for every
checkpoint, each LORS stack's per-layer static private residual ``|B A| / |W_shared|``
(mean over the stack's projections): whether the layers grew apart from the shared weight.

``--layer-updates`` (stock and LORS runs of one family) prints, between consecutive
checkpoints, how far each layer's weight matrices moved, ``|D_i| / |W_i|`` with ``D_i`` the
change of layer ``i`` (a LORS layer's effective weight ``W_shared + B A``), and how much of
that step was the layer's own, ``|D_i - mean D| / |D_i|`` (0: all layers moved together),
over the layers of the LORS stacks.

``--logged-losses`` (any run) prints each logged per-stage loss ending with ``--loss-suffix``
(default ``loss_cls``: ``enc_loss_cls``, ``d0.loss_cls``, ..., ``loss_cls`` of the last
layer), averaged over the logged iterations from ``--from-iter`` on (default: the last
fifth), mean over the seeds of each run name: does each stage improve on the one before?

``--layer-ap`` (DETR-family runs, stock or LORS) prints the COCO AP of each decoder layer's
own predictions at the last checkpoint (the decoder cut after that layer), mean ± std over
the seeds of each run name, and the last layer minus the one before, paired by seed with its
95% interval; kept in ``layer_ap.json`` in each run dir (``--force`` recomputes);
``--plot PNG`` draws it.
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List, Optional

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from lors_mmdet.diagnostics import (compared_layer_updates, diagnose_run,  # noqa: E402
                                    format_diagnostics, logged_losses, mean_std,
                                    paired_difference, run_layer_ap, run_residual_sizes)


def run_name(run_dir: str) -> str:
    """The run's name: the folder above its seed folder, as run_experiments.py names it."""
    return osp.basename(osp.dirname(osp.abspath(run_dir))).replace('_', ' ')


def print_layer_ap(run_dirs: List[str], force: bool, plot: Optional[str] = None) -> None:
    """The ``--layer-ap`` table, and with ``plot`` its picture.

    Args:
        run_dirs: finished DETR-family runs.
        force: recompute each run's ``layer_ap.json``.
        plot: where to write the picture (AP by decoder layer, one line per run name).
    """
    by_name: Dict[str, List[Dict[str, float]]] = {}
    for run_dir in run_dirs:
        by_name.setdefault(run_name(run_dir), []).append(run_layer_ap(run_dir, force))
    layers = list(next(iter(by_name.values()))[0])
    print('| run | seeds | ' + ' | '.join(layers) + ' | last - the one before, 95% CI |')
    print('|---|---|' + '---|' * (len(layers) + 1))
    for name, runs in by_name.items():
        keys = list(runs[0])
        if any(list(r) != keys for r in runs):
            raise ValueError(f'{name}: the seeds\' decoders differ in depth')
        diff = paired_difference([r[keys[-1]] for r in runs], [r[keys[-2]] for r in runs])
        print(f'| {name} | {len(runs)} | '
              + ' | '.join(mean_std([r[k] for r in runs]) if k in keys else '-'
                           for k in layers)
              + f' | {diff["mean"]:+.3f} [{diff["low"]:+.3f}, {diff["high"]:+.3f}] |')
    if plot:
        plot_layer_ap(by_name, plot)


def plot_layer_ap(by_name: Dict[str, List[Dict[str, float]]], path: str) -> None:
    """AP by decoder layer: each run name's mean over its seeds (a line; stock solid, LORS
    dashed) and every seed (dots), written to ``path``.

    Args:
        by_name: per run name, one ``{layer: AP}`` per seed.
        path: the picture file.
    """
    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for colour, (name, runs) in enumerate(by_name.items()):
        layers = list(runs[0])
        means = [sum(r[k] for r in runs) / len(runs) for k in layers]
        style = dict(color=f'C{colour}', linestyle='--' if name.startswith('lors') else '-')
        axes.plot(range(len(layers)), means, marker='o', label=f'{name} ({len(runs)} seeds)',
                  **style)
        for run in runs:
            axes.plot(range(len(layers)), [run[k] for k in layers], linestyle='none',
                      marker='.', alpha=0.4, color=style['color'])
    axes.set_xticks(range(len(layers)), [f'layer {k[1:]}' for k in layers])
    axes.set(xlabel='decoder cut after', ylabel='COCO bbox mAP (synthetic val)',
             title='AP of each decoder layer\'s own predictions')
    axes.legend(fontsize=8)
    figure.tight_layout()
    figure.savefig(path, dpi=110)
    print(f'wrote {path}')


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('run_dirs', nargs='+', help='work dirs of finished runs')
    parser.add_argument('--stage-ap', action='store_true',
                        help='evaluate every stage at the last checkpoint')
    parser.add_argument('--force', action='store_true', help='recompute')
    parser.add_argument('--residuals', action='store_true',
                        help='only print the per-layer private residual sizes of every '
                        'LORS stack at every checkpoint (any LORS detector)')
    parser.add_argument('--layer-updates', action='store_true',
                        help='only print how far each layer\'s weights moved between '
                        'checkpoints, stock and LORS runs alike')
    parser.add_argument('--logged-losses', action='store_true',
                        help='only print the logged per-stage losses ending with '
                        '--loss-suffix, mean over each run name\'s seeds')
    parser.add_argument('--layer-ap', action='store_true',
                        help='only print the AP of each decoder layer\'s own predictions '
                        '(DETR-family runs), mean over each run name\'s seeds')
    parser.add_argument('--plot', metavar='PNG',
                        help='with --layer-ap: also draw AP by decoder layer into PNG')
    parser.add_argument('--loss-suffix', default='loss_cls',
                        help='with --logged-losses: which losses (default loss_cls)')
    parser.add_argument('--from-iter', type=int,
                        help='with --logged-losses: first iteration averaged (default: '
                        'the last fifth of the run)')
    parser.add_argument('--summary', metavar='FILE',
                        help='also write markdown tables of all the runs (grouped by '
                        'the name of the folder above each seed folder) to FILE')
    args = parser.parse_args()
    if args.residuals:
        print('| run | checkpoint | stack | norm(B A) / norm(W_shared), per layer |')
        print('|---|---|---|---|')
        for run_dir in args.run_dirs:
            for checkpoint, stacks in run_residual_sizes(run_dir).items():
                for stack, sizes in stacks.items():
                    print(f'| {run_dir} | {checkpoint} | {stack} | '
                          + ', '.join(f'{s:.3f}' for s in sizes) + ' |')
        return
    if args.logged_losses:
        by_name = {}
        for run_dir in args.run_dirs:
            by_name.setdefault(run_name(run_dir), []).append(
                logged_losses(run_dir, args.loss_suffix, args.from_iter))
        keys = list(next(iter(by_name.values()))[0])
        print('| run | seeds | ' + ' | '.join(keys) + ' |')
        print('|---|---|' + '---|' * len(keys))
        for name, runs in by_name.items():
            print(f'| {name} | {len(runs)} | ' + ' | '.join(
                f'{sum(r[k] for r in runs) / len(runs):.3f}' if all(k in r for r in runs)
                else '-' for k in keys) + ' |')
        return
    if args.layer_ap:
        print_layer_ap(args.run_dirs, args.force, args.plot)
        return
    if args.layer_updates:
        print('| run | checkpoints | layers | moved: norm(D_i) / norm(W_i) | '
              'own: norm(D_i - mean D) / norm(D_i) |')
        print('|---|---|---|---|---|')
        for run_dir, pairs in compared_layer_updates(args.run_dirs).items():
            for pair, containers in pairs.items():
                for container, values in containers.items():
                    print(f'| {run_dir} | {pair} | {container} | '
                          + ' | '.join(', '.join(f'{v:.3f}' for v in values[kind])
                                       for kind in ('moved', 'own')) + ' |')
        return
    runs = {}
    for run_dir in args.run_dirs:
        result = diagnose_run(run_dir, stage_ap=args.stage_ap, force=args.force)
        runs.setdefault(run_name(run_dir), []).append(result)
    if args.summary:
        command = 'python tools/analysis/diagnose_run.py ' + ' '.join(sys.argv[1:])
        with open(args.summary, 'w') as f:
            f.write(f'Produced by `{command}`.\n\n' + format_diagnostics(runs))
        print(f'wrote {args.summary}')


if __name__ == '__main__':
    main()
