"""Generate the embedded synthetic COCO-format detection data set.

    python tools/generate_synthetic_coco.py             # data/synthetic_coco
    python tools/generate_synthetic_coco.py --out DIR --num-train 200 --seed 1
    python tools/generate_synthetic_coco.py --check-only  # validate only

The drawing and the annotation policy live in lors_mmdet/datasets/synthetic.py.
"""
import argparse
import sys
import time

from lors_mmdet.datasets.synthetic import (CLASSES, generate_synthetic_coco,
                                           validate_synthetic_coco)


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--out',
                        default='data/synthetic_coco',
                        help='output root folder')
    parser.add_argument('--num-train', type=int, default=1000)
    parser.add_argument('--num-val', type=int, default=100)
    parser.add_argument('--img-size',
                        type=int,
                        default=128,
                        help='side of the square images')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--max-objects', type=int, default=6)
    parser.add_argument('--min-objects', type=int, default=1)
    parser.add_argument(
        '--size-range',
        type=float,
        nargs=2,
        default=(0.1, 0.4),
        metavar=('LOW', 'HIGH'),
        help='shape sizes sqrt(w*h) as fractions of the image side')
    parser.add_argument('--check',
                        action='store_true',
                        help='validate the annotations after generating')
    parser.add_argument('--check-only',
                        action='store_true',
                        help='only validate an existing data set at --out')
    parser.add_argument('--no-progress',
                        action='store_true',
                        help='hide the progress bar')
    return parser.parse_args(argv)


def print_counts(counts: dict) -> None:
    for split, numbers in counts.items():
        per_class = ', '.join(f'{name} {numbers[name]}' for name in CLASSES)
        print(f'  {split}: {numbers["images"]} images, '
              f'{numbers["annotations"]} boxes ({per_class})')


def main(argv=None) -> int:
    args = parse_args(argv)
    try:
        run(args)
    except (ValueError, TypeError, FileNotFoundError) as error:
        print(f'error: {error}', file=sys.stderr)
        return 2
    return 0


def run(args: argparse.Namespace) -> None:
    if not args.check_only:
        start = time.perf_counter()
        generate_synthetic_coco(args.out,
                                num_train=args.num_train,
                                num_val=args.num_val,
                                img_size=args.img_size,
                                seed=args.seed,
                                max_objects=args.max_objects,
                                min_objects=args.min_objects,
                                size_range=tuple(args.size_range),
                                show_progress=not args.no_progress)
        print(f'Wrote {args.num_train} train + {args.num_val} val images to '
              f'{args.out} in {time.perf_counter() - start:.1f} s')
    if args.check or args.check_only:
        print_counts(validate_synthetic_coco(args.out))
        print('Annotations are valid.')


if __name__ == '__main__':
    sys.exit(main())
