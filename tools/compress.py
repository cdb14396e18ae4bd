"""Compress a trained detector (DETR family, Sparse R-CNN, QueryInst, AdaMixer)
to LORS, ready for a short fine-tune.

    python tools/compress.py CONFIG CHECKPOINT --out DIR \
        [--stacks decoder encoder mask_decoder] [--rank R | --energy 0.9] \
        [--ranks [PART:]PATTERN=R ...] [--name NAME] [--distill [WEIGHT]] \
        [--freeze-shared F] [--force]

CHECKPOINT is a file or a URL (mmdet's model zoo), loaded safely. Writes
DIR/NAME.pth (the LORS checkpoint) and DIR/NAME.py (a config inheriting
CONFIG with the LORS model, load_from = the checkpoint and a short fine-tune
schedule), and prints per projection kind the rank and the residual energy
kept, and the parameter counts before / after. Then fine-tune:

    tools/dist_train.sh DIR/NAME.py 8

See docs/compress.md.
"""
import argparse
import shlex
import sys

from mmengine.config import DictAction

import lors_mmdet  # noqa: F401  (safe checkpoint loaders, registers models)
from lors_mmdet.apis import (STACK_PARTS, compress, format_compression,
                             parse_rank, parse_rank_overrides)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('config', help='the stock config (file or mmdet::...)')
    parser.add_argument('checkpoint', help='its trained checkpoint (file or '
                        'URL)')
    parser.add_argument('--out', required=True, help='output folder')
    parser.add_argument('--name', help='output file name stem (default '
                        'lors-compressed_<config name>)')
    parser.add_argument('--stacks', nargs='+', default=['decoder'],
                        choices=STACK_PARTS,
                        help='stacks to compress (default: decoder; a DETR\'s '
                        'decoder / encoder, the RoI-head stages of Sparse R-CNN, '
                        'QueryInst and AdaMixer as decoder, QueryInst\'s mask '
                        'stages as mask_decoder)')
    how = parser.add_mutually_exclusive_group()
    how.add_argument('--rank', type=parse_rank,
                     help="one rank for every projection (int or 'full')")
    how.add_argument('--energy', type=float,
                     help='per projection kind, the smallest rank keeping '
                     'this fraction of every layer\'s residual energy '
                     '(default 0.9)')
    how.add_argument('--budget', type=float, metavar='F',
                     help='keep this fraction of the stock parameters of the '
                     'modules holding the stacks (a DETR\'s transformer, the RoI '
                     'head), per-layer ranks chosen by the measured output '
                     'error with --calibrate, else by the weight-space error')
    parser.add_argument('--calibrate', type=int, metavar='N',
                        help='fit the LORS factors to the inputs of N batches of '
                        'the config\'s train dataloader (data-aware init)')
    parser.add_argument('--refit-shared', type=int, default=0, metavar='K',
                        help='with --calibrate: K alternations of refitting the '
                        'shared weights to the inputs (default 0: the mean)')
    parser.add_argument('--ranks', nargs='+', default=[],
                        metavar='[PART:]PATTERN=R',
                        help='rank of the projections a glob pattern names '
                        '(e.g. "ffn.*=32" or "decoder:cross_attn.*=8")')
    parser.add_argument('--finetune-fraction', type=float, default=0.2,
                        help='fine-tune length / original length (0.2)')
    parser.add_argument('--lr-factor', type=float, default=0.1,
                        help='fine-tune lr / original lr (0.1)')
    parser.add_argument('--freeze-shared', type=float, default=0.0, metavar='F',
                        help='hold the shared weights fixed for this first fraction '
                        'of the fine-tune (the private residuals learn first; '
                        'default 0: everything trains from the start)')
    parser.add_argument('--distill', nargs='?', type=float, const=1.0,
                        metavar='WEIGHT', help='distil from the stock model '
                        'during the fine-tune (prediction loss weight, 1.0)')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction, default={},
                        help='overrides of CONFIG for this command only, e.g. the '
                        'data root of the calibration data '
                        '(train_dataloader.dataset.data_root=...)')
    parser.add_argument('--force', action='store_true',
                        help='replace existing output files')
    args = parser.parse_args()
    if args.rank is None and args.energy is None and args.budget is None:
        args.energy = 0.9
    return args


def main() -> None:
    args = parse_args()
    result = compress(
        args.config, args.checkpoint, args.out, name=args.name,
        parts=args.stacks, rank=args.rank, energy=args.energy,
        ranks=parse_rank_overrides(args.ranks),
        fraction=args.finetune_fraction, lr_factor=args.lr_factor,
        distill=None if args.distill is None else dict(weight=args.distill),
        force=args.force, calibrate=args.calibrate, budget=args.budget,
        refit_shared=args.refit_shared, cfg_options=args.cfg_options,
        freeze_shared=args.freeze_shared,
        command=' '.join(map(shlex.quote, ['python', 'tools/compress.py',
                                           *sys.argv[1:]])))
    print(format_compression(result))
    print(f'fine-tune: tools/dist_train.sh {shlex.quote(result.config)} '
          'GPUS   (or python tools/train.py ...)')


if __name__ == '__main__':
    main()
