"""Bar chart of decoder parameters, stock vs LORS, for the R-50 COCO config pairs.

    python tools/analysis/decoder_params_chart.py [--out docs/experiments/decoder_params.png]

The pairs are those of ``benchmark.py --device cuda``; every count comes from
``param_report.py`` (each tensor once, models built on the meta device).
"""
import argparse
import os
import os.path as osp
import sys

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from tools.analysis import benchmark, param_report as report  # noqa: E402


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--out', default='docs/experiments/decoder_params.png')
    args = parser.parse_args(argv)

    rows = []
    for family, (stock, lors) in benchmark.PAIRS['cuda'].items():
        counts = [report.parameter_report(report.build_model(config))['decoder']['total']
                  for config in (stock, lors)]
        rows.append((family, *counts))
    print('| family (R-50 COCO config) | stock decoder | LORS decoder | LORS / stock |')
    print('|---|---|---|---|')
    for family, stock, lors in rows:
        print(f'| {family} | {stock / 1e6:.3f}M | {lors / 1e6:.3f}M | {lors / stock:.3f} |')

    import matplotlib
    matplotlib.use('Agg')
    import matplotlib.pyplot as plt
    figure, axes = plt.subplots(figsize=(6.5, 3.8))
    positions = range(len(rows))
    axes.bar([p - 0.2 for p in positions], [r[1] / 1e6 for r in rows], 0.4, label='stock')
    axes.bar([p + 0.2 for p in positions], [r[2] / 1e6 for r in rows], 0.4, label='LORS')
    for p, (_, stock, lors) in zip(positions, rows):
        axes.text(p + 0.2, lors / 1e6, f'{lors / stock:.0%}', ha='center', va='bottom')
    axes.set_xticks(list(positions), [r[0] for r in rows])
    axes.set(ylabel='decoder parameters (M)', title='Decoder parameters, R-50 COCO configs')
    axes.legend()
    figure.text(0.01, 0.01, 'python tools/analysis/decoder_params_chart.py', fontsize=7)
    figure.tight_layout()
    os.makedirs(osp.dirname(args.out) or '.', exist_ok=True)
    figure.savefig(args.out, dpi=110)
    print(f'wrote {args.out}')
    return 0


if __name__ == '__main__':
    sys.exit(main())
