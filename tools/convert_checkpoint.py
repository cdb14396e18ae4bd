"""Convert a checkpoint between a stock detector and its LORS version.

Any config with ``model.lors``: the DETR family (LorsDINO...) and AdaMixer
(LORS-AdaMixer). Stock checkpoint -> LORS: the stock model loads it, the stacks named in
the config's ``model.lors`` (encoder / decoder) are turned into LORS from its
weights (shared = mean of the layers, private = truncated SVD of each layer's
residual, at the config's ranks; exact at ``--rank full``), and the result
must load strictly into the LORS model. Prints the reconstruction error and
the parameter counts::

    python tools/convert_checkpoint.py to-lors \
        configs/lors_dino/lors-dino-4scale_r50_8xb2-12e_coco.py \
        dino_stock.pth dino_lors.pth [--rank 32 | --rank full]

The LORS settings of the result are recorded in its meta. When they differ from
the config's (another --rank), a config that sets them (dino_lors.py beside
dino_lors.pth, inheriting the given config) is written and the --cfg-options
and tools/test.py command that load the result are printed.

LORS checkpoint -> stock, also the merge for deployment (every stack merged,
W_i = W_shared + B_i A_i, LORS-AdaMixer's adaptive residuals folded into each
stage's generator, exactly; the result loads into the stock config, e.g.
mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py, or the one --out-config writes)::

    python tools/convert_checkpoint.py to-stock \
        configs/lors_dino/lors-dino-4scale_r50_8xb2-12e_coco.py \
        dino_lors.pth dino_stock.pth
    python tools/convert_checkpoint.py to-stock \
        configs/lors_adamixer/lors-adamixer_r50_8xb2-1x-100q_coco.py \
        lors_adamixer.pth adamixer.pth --out-config adamixer.py
    python tools/test.py adamixer.py adamixer.pth
"""
import argparse

import lors_mmdet  # noqa: F401  (compat fixes, registers the LORS models)
from lors_mmdet.engine import (check_outputs, fit_config, format_config_fit,
                               matching_config_path)
from lors_mmdet.apis import convert_checkpoint, format_conversion, parse_rank


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('direction', choices=['to-lors', 'to-stock'])
    parser.add_argument('config', help='the LORS config (with model.lors) '
                        'of the LORS side')
    parser.add_argument('checkpoint', help='input checkpoint')
    parser.add_argument('out', help='output checkpoint')
    parser.add_argument('--rank', type=parse_rank, default=None,
                        help="to-lors: override the rank of every part of "
                        "model.lors (int or 'full' for an exact conversion)")
    parser.add_argument('--out-config', default=None,
                        help='to-stock: also write the stock config (.py)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    # Refuse to overwrite a user's file or an input before any work is done.
    config_out = matching_config_path(args.out) if args.rank is not None else None
    check_outputs(dict(config=args.config, checkpoint=args.checkpoint),
                  dict(checkpoint=args.out, config=config_out,
                       out_config=args.out_config))
    result = convert_checkpoint(args.direction, args.config, args.checkpoint,
                                args.out, rank=args.rank,
                                out_config=args.out_config)
    print(format_conversion(result))
    print(f'saved {args.out}' + (f' and {args.out_config}'
                                 if args.out_config else ''))
    if result.lors_settings:
        print(format_config_fit(fit_config(args.config, args.out, result.lors_settings,
                                           config_out)))


if __name__ == '__main__':
    main()
