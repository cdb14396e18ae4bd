"""Evaluate a checkpoint: ``python tools/test.py CONFIG CHECKPOINT [--show-dir DIR]``.

COCO bbox mAP comes from the config's ``test_evaluator`` (mmdet's CocoMetric,
i.e. pycocotools). Multi-GPU: ``tools/dist_test.sh CONFIG CHECKPOINT GPUS``.
"""
import argparse
import os
import os.path as osp

import lors_mmdet.compat  # noqa: F401  (before mmengine loads any checkpoint)
from mmengine.config import DictAction
from mmengine.runner import Runner

from lors_mmdet.engine import (add_lors_checkpoint_check, adapt_cfg_to_machine, check_data_paths,
                               load_tool_config)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Test (and evaluate) a detector')
    parser.add_argument('config', help='test config file path')
    parser.add_argument('checkpoint', help='checkpoint file or URL (http(s)://, '
                        'torchvision://, open-mmlab://...); loaded weights-only')
    parser.add_argument('--work-dir', help='where the evaluation metrics are saved')
    parser.add_argument('--out', help='dump predictions to a pickle file (.pkl)')
    parser.add_argument('--show-dir', help='save images with detections drawn into '
                        'this folder (inside the work dir / timestamp)')
    parser.add_argument('--score-thr', type=float, default=0.3,
                        help='score threshold of the drawn detections')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. test_dataloader.batch_size=1')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = load_tool_config(args.config, args.launcher, args.work_dir, args.cfg_options)
    if '://' not in args.checkpoint and not osp.isfile(args.checkpoint):
        raise FileNotFoundError(f'checkpoint "{args.checkpoint}" does not exist')
    cfg.load_from = args.checkpoint
    if args.show_dir:
        visualization = cfg.default_hooks.setdefault(
            'visualization', dict(type='DetVisualizationHook'))
        visualization.update(draw=True, test_out_dir=args.show_dir,
                             score_thr=args.score_thr)
    if args.out is not None:
        if not args.out.endswith(('.pkl', '.pickle')):
            raise ValueError(f'--out must be a .pkl file, got "{args.out}"')
        cfg.test_evaluator = [*(cfg.test_evaluator if isinstance(cfg.test_evaluator, list)
                                else [cfg.test_evaluator]),
                              dict(type='DumpDetResults', out_file_path=args.out)]
    adapt_cfg_to_machine(cfg, args.launcher)
    check_data_paths(cfg, splits=('test',))

    add_lors_checkpoint_check(cfg)  # a checkpoint that misfits a LORS stack is an error
    runner = Runner.from_cfg(cfg)
    runner.test()


if __name__ == '__main__':
    main()
