"""Convert an authors' AdaMixer or LORS-AdaMixer checkpoint (mmdet 2.12
releases MCG-NJU/AdaMixer and li-jl16/LORS) to this plugin's layout::

    python tools/convert_adamixer_checkpoint.py SRC.pth DST.pth [--config CONFIG]

then evaluate it with the matching config, e.g.::

    python tools/test.py configs/lors_adamixer/lors-adamixer_r50_8xb2-1x-100q_coco.py DST.pth

Every tensor is copied one to one (the published LORS-AdaMixer configs store
the per-group adaptive factors as the authors do). The decoder settings read
from the tensors' shapes are printed and kept in ``meta['adamixer_conversion']``;
with ``--config`` they are compared with the config's ``model.roi_head`` and
any difference is an error. The key mapping is documented in
lors_mmdet/models/adamixer/checkpoint_converter.py and docs/adamixer.md. The
source (a file or a URL) is loaded with weights_only=True.
"""
import argparse

from lors_mmdet.apis import import_adamixer_release


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument('src', help="the authors' checkpoint (.pth file or URL)")
    parser.add_argument('dst', help='where to write the converted checkpoint')
    parser.add_argument(
        '--config',
        help='a config the checkpoint is meant for: its decoder settings '
        'must match the checkpoint\'s')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    try:
        converted, report = import_adamixer_release(args.src, args.dst, args.config)
    except ValueError as error:
        raise SystemExit(f'error: {error}')
    print(f'{report["release"]} checkpoint, {report["num_stages"]} stages, '
          f'{len(converted["state_dict"])} tensors -> {args.dst}')
    print('model.roi_head: ' + ', '.join(
        f'{key}={value}' for key, value in report['decoder'].items()))
    if report['lors']:
        print(f'model.lors.decoder: {report["lors"]}')
    if report['dropped']:
        print('dropped (no counterpart here): ' + ', '.join(report['dropped']))


if __name__ == '__main__':
    main()
