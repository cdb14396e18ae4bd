"""Parameter report of a detector config: ``python tools/analysis/param_report.py CONFIG [--json]``.

Counts every tensor once (``lors_mmdet.lors.count_parameters``): the whole
model, each top-level part (backbone, neck, query generator / encoder /
heads, decoder), the decoder split into the shared LORS tensors registered on
the stack owner and the private tensors of each stage / layer, and for LORS
models the stock equivalent: the same architecture with every layer owning a
copy of each shared weight (and no LORS factors).

Works for any config whose model has a ``roi_head`` (AdaMixer family: stages
in ``roi_head.bbox_head``) or a ``decoder`` (DETR family: layers in
``decoder.layers``). The model is built without its pretrained-backbone init
(nothing is downloaded), on PyTorch's meta device when possible (no memory).

``--detr-table [--write docs/detr.md]``: the DETR-family table (encoder /
decoder / transformer / whole model, mmdet's stock config vs the LORS
decoder-only and encoder + decoder configs), printed, or written between the
``<!-- detr-params:start -->`` / ``<!-- detr-params:end -->`` markers of a file.
"""
import argparse
import json
import os.path as osp
import sys
from typing import Dict, List, Optional

import torch
import torch.nn as nn
from mmengine.config import DictAction

ROOT = osp.dirname(osp.dirname(osp.dirname(osp.abspath(__file__))))
sys.path.insert(0, ROOT)  # run as a file: see tools/__init__.py
from lors_mmdet import apis  # noqa: E402
from lors_mmdet.analysis import parameter_report  # noqa: E402
from tools.upkeep.docs_tables import detr_parameter_table, write_generated  # noqa: E402


def build_model(config: str, cfg_options: Optional[dict] = None) -> nn.Module:
    """Build the config's model without pretrained init, on the meta device
    if the model allows it (some backbones read tensor values while being
    built), else on the CPU. ``cfg_options`` overrides config keys."""
    cfg = apis.load_config(config)
    if cfg_options:
        cfg.merge_from_dict(cfg_options)
    try:
        with torch.device('meta'):
            return apis.build_model(cfg.model)
    except (RuntimeError, NotImplementedError):
        return apis.build_model(cfg.model)


def _millions(value: int) -> str:
    return f'{value / 1e6:9.3f}M {value:>13,}'


def saving_text(lors: int, stock: int) -> str:
    """'LORS saves X%' of ``stock``, or 'LORS adds X%' when LORS is larger."""
    change = 100 * (lors - stock) / stock
    if change > 0:
        return f'LORS adds {change:.1f}%'
    return f'LORS saves {-change:.1f}%'


def format_report(config: str, report: dict) -> str:
    """Human-readable table of :func:`parameter_report`."""
    total, dec = report['total'], report['decoder']
    lines = [
        f'{config}',
        f'model {report["model"]}, decoder {dec["name"]} ({dec["type"]}), '
        f'LORS: {"yes" if report["lors"] else "no"}', ''
    ]
    lines.append(f'{"part":<34}{"parameters":>11} {"exact":>13}')
    for name, value in report['parts'].items():
        lines.append(f'{name:<34}{_millions(value)}')
    lines.append(f'{"total":<34}{_millions(total["total"])}')
    lines += ['', f'decoder ({dec["name"]})']
    lines.append(f'  {"shared (registered once)":<32}{_millions(dec["shared"])}')
    lines.append(f'  {"private, all stages":<32}'
                 f'{_millions(dec["private"] - dec["private_outside_stages"])}')
    if dec['private_outside_stages']:
        lines.append(f'  {"private, outside the stages":<32}'
                     f'{_millions(dec["private_outside_stages"])}')
    for i, stage in enumerate(dec['stages']):
        lines.append(f'    {f"stage {i} private":<30}'
                     f'{_millions(stage["private"])}')
    lines.append(f'  {"decoder total":<32}{_millions(dec["total"])}')
    if report['lors']:
        lines += [
            '',
            'stock equivalent (same architecture, every stage with its own '
            'copy of the shared weights, no LORS factors):',
            f'  {"decoder":<32}{_millions(dec["stock_equivalent"])}'
            f'  ({saving_text(dec["total"], dec["stock_equivalent"])})',
            f'  {"whole model":<32}{_millions(total["stock_equivalent"])}'
            f'  ({saving_text(total["total"], total["stock_equivalent"])})',
        ]
    return '\n'.join(lines)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(
        description='Parameter report of a detector config (total, parts, '
        'decoder shared / private, per stage, stock equivalent).')
    parser.add_argument('config', nargs='?', help='config file')
    parser.add_argument('--detr-table', action='store_true',
                        help='the DETR-family table, stock vs LORS, instead')
    parser.add_argument('--write', metavar='FILE',
                        help='--detr-table: write it between the '
                        'detr-params markers of FILE')
    parser.add_argument('--json', action='store_true',
                        help='print the report as JSON')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, as in tools/train.py')
    args = parser.parse_args(argv)
    if args.detr_table:
        table = detr_parameter_table(build_model)
        if args.write:
            write_generated(args.write, 'detr-params', table)
        print(table)
        return 0
    if args.config is None:
        parser.error('a config is needed (or --detr-table)')
    model = build_model(args.config, args.cfg_options)
    report = parameter_report(model)
    if args.json:
        print(json.dumps(dict(config=args.config, **report), indent=2))
    else:
        print(format_report(args.config, report))
    return 0


if __name__ == '__main__':
    sys.exit(main())
