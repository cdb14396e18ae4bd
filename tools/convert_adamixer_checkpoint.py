"""Convert an authors' AdaMixer or LORS-AdaMixer checkpoint (mmdet 2.12
releases MCG-NJU/AdaMixer and li-jl16/LORS) to this plugin's layout::

    python tools/convert_adamixer_checkpoint.py SRC.pth DST.pth

then evaluate it with the matching config, e.g.::

    python tools/test.py configs/adamixer/adamixer_r50_8xb2-1x-100q_coco.py DST.pth

A LORS-AdaMixer checkpoint is evaluated with ``num_terms`` multiplied by the
number of mixing groups (the authors' per-group factors become terms of their
own; the conversion is exact), which this script prints, e.g.::

    python tools/test.py configs/lors_adamixer/lors-adamixer_r50_8xb2-1x-100q_coco.py \
        DST.pth --cfg-options "model.roi_head.num_terms=[2,2,4,4,6,6]"

The key mapping is documented in lors_mmdet/models/adamixer/checkpoint_converter.py
and docs/adamixer.md. The source is loaded with weights_only=True.
"""
import argparse
import os.path as osp

import torch

from lors_mmdet.compat import safe_load_checkpoint
from lors_mmdet.models.adamixer.checkpoint_converter import \
    convert_adamixer_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument('src', help="the authors' checkpoint (.pth)")
    parser.add_argument('dst', help='where to write the converted checkpoint')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    if osp.abspath(args.src) == osp.abspath(args.dst):
        raise SystemExit('error: dst must differ from src')
    checkpoint = safe_load_checkpoint(args.src, map_location='cpu')
    converted, report = convert_adamixer_checkpoint(checkpoint)
    torch.save(converted, args.dst)
    print(f'{report["release"]} checkpoint, {report["num_stages"]} stages, '
          f'{len(converted["state_dict"])} tensors -> {args.dst}')
    if report['dropped']:
        print('dropped (no counterpart here): ' + ', '.join(report['dropped']))
    if 'num_terms' in report:
        terms = ','.join(str(t) for t in report['num_terms'])
        print('evaluate with --cfg-options '
              f'"model.roi_head.num_terms=[{terms}]"')


if __name__ == '__main__':
    main()
