"""Diagnostics of one (LORS-)AdaMixer training run, from its checkpoints.

    python tools/analysis/diagnose_run.py work_dirs/study6/lors-adamixer_6-stage/seed0

For every ``iter_*.pth`` of the run: weight and gradient norms per decoder parameter
group, each stage's loss on one training batch, a LORS decoder's private residual
sizes; the update norms between consecutive checkpoints; with ``--stage-ap`` the AP of
each stage's own predictions at the last checkpoint. Written to ``diagnostics.json`` in
the run dir; a run that has one is skipped (``--force`` recomputes). ``--summary FILE``
writes markdown tables of all the given runs, mean over the seeds of each model, and
each run against the first paired by seed (stage APs, gains and losses; 95% intervals).
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

``--layer-gradients`` (stock and LORS runs of one family) prints, at the last checkpoint and
summed over the first ``--batches`` training batches, the gradient of the loss with respect to
each layer's weight matrices ``g_i`` (a LORS layer's effective weight): its share of the
layers' gradient sizes, ``|g_i| / sum |g_j|``, and ``cos(g_i, sum g_j)``, how well the
direction a shared weight is pushed in (``sum g_j``) serves layer ``i``.

``--layer-ap`` (DETR-family runs, stock or LORS) prints the COCO AP of each decoder layer's
own predictions at the last checkpoint (the decoder cut after that layer), mean ± std over
the seeds of each run name, and the last layer minus the one before, paired by seed with its
95% interval; kept in ``layer_ap.json`` in each run dir (``--force`` recomputes);
``--plot PNG`` draws it.
"""
import argparse
import os.path as osp
import sys
from typing import Dict, List

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from lors_mmdet.diagnostics import (by_run_name, compared_layer_updates,  # noqa: E402
                                    diagnose_run, format_diagnostics, format_layer_ap,
                                    format_layer_gradients, format_layer_updates,
                                    format_logged_losses, format_residual_sizes,
                                    logged_losses, lors_containers, run_layer_ap,
                                    run_layer_gradients, run_residual_sizes)


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
    parser.add_argument('--layer-gradients', action='store_true',
                        help='only print which layer the gradient of the shared weights '
                        'serves, at the last checkpoint, stock and LORS runs alike')
    parser.add_argument('--batches', type=int, default=4,
                        help='with --layer-gradients: training batches summed (default 4)')
    parser.add_argument('--plot', metavar='PNG',
                        help='with --layer-ap: also draw AP by decoder layer into PNG')
    parser.add_argument('--loss-suffix', default='loss_cls',
                        help='with --logged-losses: which losses (default loss_cls)')
    parser.add_argument('--from-iter', type=int,
                        help='with --logged-losses: first iteration averaged (default: '
                        'the last fifth of the run)')
    parser.add_argument('--summary', metavar='FILE',
                        help='also write markdown tables of all the runs (grouped by '
                        'the name of the folder above each seed folder), and each '
                        'run against the first paired by seed, to FILE')
    args = parser.parse_args()
    if args.residuals:
        print(format_residual_sizes({d: run_residual_sizes(d) for d in args.run_dirs}), end='')
    elif args.logged_losses:
        print(format_logged_losses(by_run_name(args.run_dirs, lambda d: logged_losses(
            d, args.loss_suffix, args.from_iter))), end='')
    elif args.layer_ap:
        layer_ap = by_run_name(args.run_dirs, lambda d: run_layer_ap(d, args.force))
        print(format_layer_ap(layer_ap), end='')
        if args.plot:
            plot_layer_ap(layer_ap, args.plot)
    elif args.layer_gradients:
        containers = lors_containers(args.run_dirs)
        print(format_layer_gradients(by_run_name(
            args.run_dirs, lambda d: run_layer_gradients(d, containers, args.batches))), end='')
    elif args.layer_updates:
        print(format_layer_updates(compared_layer_updates(args.run_dirs)), end='')
    else:
        write_diagnostics(args)


def write_diagnostics(args: argparse.Namespace) -> None:
    """The default: :func:`diagnose_run` of every run, and with ``--summary`` its tables."""
    runs = by_run_name(args.run_dirs, lambda d: diagnose_run(d, stage_ap=args.stage_ap,
                                                             force=args.force))
    if args.summary:
        command = 'python tools/analysis/diagnose_run.py ' + ' '.join(sys.argv[1:])
        with open(args.summary, 'w') as f:
            f.write(f'Produced by `{command}`.\n\n' + format_diagnostics(runs))
        print(f'wrote {args.summary}')


if __name__ == '__main__':
    main()
