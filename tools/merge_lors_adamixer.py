"""Merge a LORS-AdaMixer into the equal plain AdaMixer for deployment::

    python tools/merge_lors_adamixer.py CONFIG CHECKPOINT OUT_CONFIG OUT_CHECKPOINT

Every stage's private adaptive residual folds into its own mixing-parameter
generator and ``B_i A_i`` into its output projection (exact: the residual is
affine in the query). The output is a plain AdaMixer config + checkpoint of
the same geometry (G=2, P_in=64 for the published model) that runs at plain
AdaMixer's cost, e.g. with mmdet's own test script::

    python tools/test.py OUT_CONFIG OUT_CHECKPOINT

See docs/adamixer.md ("Deployment: exact merge").
"""
import argparse

from lors_mmdet.apis import merge_lors_adamixer_checkpoint


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split('\n\n')[0].replace('\n', ' '))
    parser.add_argument('config', help='the LORS-AdaMixer config')
    parser.add_argument('checkpoint', help='its checkpoint (.pth)')
    parser.add_argument('out_config', help='where to write the plain '
                        'AdaMixer config (.py)')
    parser.add_argument('out_checkpoint', help='where to write the plain '
                        'AdaMixer checkpoint (.pth)')
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    merged = merge_lors_adamixer_checkpoint(args.config, args.checkpoint,
                                            args.out_config,
                                            args.out_checkpoint)
    print(f'merged {merged["num_stages"]} stages into a plain AdaMixer '
          f'(n_groups={merged["n_groups"]}, in_points={merged["in_points"]}, '
          f'out_points={merged["out_points"]}) -> {args.out_config}, '
          f'{args.out_checkpoint}')


if __name__ == '__main__':
    main()
