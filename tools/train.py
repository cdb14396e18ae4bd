"""Train a detector: ``python tools/train.py CONFIG [--work-dir DIR] [--resume [CKPT]]``.

Multi-GPU / multi-node: ``tools/dist_train.sh CONFIG GPUS`` or ``tools/slurm_train.sh``.
"""
import argparse
import os

import lors_mmdet.compat  # noqa: F401  (before mmengine loads any checkpoint)
from mmengine.config import DictAction
from mmengine.runner import Runner

from lors_mmdet.engine import (add_lors_checkpoint_check, adapt_cfg_to_machine,
                               check_coco_annotations, check_data_paths, check_pretrained_paths,
                               enable_amp, load_tool_config, select_resume_checkpoint,
                               use_atomic_checkpoints)


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description='Train a detector')
    parser.add_argument('config', help='train config file path')
    parser.add_argument('--work-dir', help='where logs and checkpoints go')
    parser.add_argument('--amp', action='store_true', help='mixed-precision training')
    parser.add_argument('--auto-scale-lr', action='store_true',
                        help='scale the lr by the actual batch size (auto_scale_lr)')
    parser.add_argument(
        '--resume', nargs='?', type=str, const='auto',
        help='resume from CHECKPOINT, or from the latest one in the work dir')
    parser.add_argument('--cfg-options', nargs='+', action=DictAction,
                        help='override config keys, e.g. train_cfg.max_epochs=2')
    parser.add_argument('--launcher', choices=['none', 'pytorch', 'slurm', 'mpi'],
                        default='none', help='job launcher')
    parser.add_argument('--local_rank', '--local-rank', type=int, default=0)
    args = parser.parse_args()
    os.environ.setdefault('LOCAL_RANK', str(args.local_rank))
    return args


def main() -> None:
    args = parse_args()
    cfg = load_tool_config(args.config, args.launcher, args.work_dir, args.cfg_options)
    if args.amp:
        enable_amp(cfg)
    if args.auto_scale_lr:
        if 'auto_scale_lr' not in cfg or 'base_batch_size' not in cfg.auto_scale_lr:
            raise KeyError(f'--auto-scale-lr needs auto_scale_lr.base_batch_size in '
                           f'{args.config}')
        cfg.auto_scale_lr.enable = True
    if args.resume == 'auto':  # the newest intact checkpoint of the work dir
        cfg.resume, cfg.load_from = True, select_resume_checkpoint(cfg.work_dir)
    elif args.resume is not None:
        cfg.resume, cfg.load_from = True, args.resume
    adapt_cfg_to_machine(cfg, args.launcher)
    use_atomic_checkpoints(cfg)
    check_data_paths(cfg, splits=('train', 'val'))
    check_coco_annotations(cfg, splits=('train', 'val'))
    check_pretrained_paths(cfg)

    add_lors_checkpoint_check(cfg)  # a checkpoint that misfits a LORS stack is an error
    runner = Runner.from_cfg(cfg)
    runner.train()


if __name__ == '__main__':
    main()
