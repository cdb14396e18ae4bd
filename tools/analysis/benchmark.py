"""Stock vs LORS detectors, measured side by side in ONE run, reported as ratios.

For each family (AdaMixer, DINO, Deformable-DETR, Sparse R-CNN): total and decoder parameters,
checkpoint size, training-step time and memory, inference latency of the LORS model
as trained and merged for deployment (every LORS linear map folded into a stock one;
LORS-AdaMixer merges exactly into a stock AdaMixer of its own geometry, which is
timed as well).
Timings are medians over repeats, stock and LORS interleaved (machines are noisy).

    python tools/analysis/benchmark.py                    # CPU: toy configs, 128 px
    python tools/analysis/benchmark.py --device cuda      # R-50 COCO configs, 800x1333, batch 2
    python tools/analysis/benchmark.py --device cuda --out benchmark_cuda.md   # also to a file

On a GPU, memory is the peak of one training step / prediction as if the model were
alone on the device: the step's peak above what was resident before it, plus the
model's own parameters, gradients and optimizer state (both models of a family stay
on the device, so the raw peak would count the other one too).
"""
import argparse
import io
import logging
import statistics
import sys
import time
from typing import Callable, Dict, List

import torch
import torch.nn as nn
from mmengine.logging import MMLogger

import lors_mmdet  # noqa: F401
from lors_mmdet.analysis import (build_detector, merged_for_deployment,
                                 synthetic_batch)
from lors_mmdet.apis import build_model, load_config
from lors_mmdet.apis.conversion import lors_and_stock_model_cfgs
from lors_mmdet.lors import count_parameters
from lors_mmdet.models.lors_stacks import lors_stack_paths_of, part_parameters

PAIRS = {
    'cpu': {
        'AdaMixer': ('configs/adamixer/adamixer_r18-tiny_1xb16-toy_synthetic.py',
                     'configs/lors_adamixer/lors-adamixer_r18-tiny_1xb16-toy_synthetic.py'),
        'DINO': ('configs/dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
                 'configs/lors_dino/lors-dino-4scale_r18-tiny_1xb8-toy_synthetic.py'),
        'DINO-encdec': (
            'configs/dino/dino-4scale_r18-tiny_1xb8-toy_synthetic.py',
            'configs/lors_dino/lors-encdec-dino-4scale_r18-tiny_1xb8-toy_synthetic.py'),
        'Deformable-DETR': (
            'configs/deformable_detr/deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py',
            'configs/lors_deformable_detr/'
            'lors-deformable-detr-refine_r18-tiny_1xb8-toy_synthetic.py'),
        'Sparse-R-CNN': (
            'configs/sparse_rcnn/sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py',
            'configs/lors_sparse_rcnn/lors-sparse-rcnn_r18-tiny_1xb8-toy_synthetic.py'),
    },
    'cuda': {
        'AdaMixer': ('configs/adamixer/adamixer_r50_8xb2-1x-100q_coco.py',
                     'configs/lors_adamixer/lors-adamixer_r50_8xb2-1x-100q_coco.py'),
        'DINO': ('mmdet::dino/dino-4scale_r50_8xb2-12e_coco.py',
                 'configs/lors_dino/lors-dino-4scale_r50_8xb2-12e_coco.py'),
        'Deformable-DETR': (
            'mmdet::deformable_detr/deformable-detr-refine_r50_16xb2-50e_coco.py',
            'configs/lors_deformable_detr/lors-deformable-detr-refine_r50_16xb2-50e_coco.py'),
        'Sparse-R-CNN': ('mmdet::sparse_rcnn/sparse-rcnn_r50_fpn_1x_coco.py',
                         'configs/lors_sparse_rcnn/lors-sparse-rcnn_r50_fpn_1x_coco.py'),
    },
}
IMAGE = {'cpu': (128, 128), 'cuda': (800, 1333)}


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--device', choices=['cpu', 'cuda'], default='cpu')
    parser.add_argument('--families', nargs='+', default=list(PAIRS['cpu']))
    parser.add_argument('--batch-size', type=int, default=2)
    parser.add_argument('--repeats', type=int, default=5)
    parser.add_argument('--warmup', type=int, default=2)
    parser.add_argument('--threads', type=int, default=None, help='torch CPU threads')
    parser.add_argument('--out', help='also write the report to this file')
    return parser.parse_args()


def checkpoint_megabytes(model: nn.Module) -> float:
    buffer = io.BytesIO()
    torch.save(model.state_dict(), buffer)
    return buffer.tell() / 2**20


def synchronize(device: str) -> None:
    if device == 'cuda':
        torch.cuda.synchronize()


class SavedActivations:
    """Bytes of the tensors autograd keeps for backward (unique storages)."""

    def __init__(self) -> None:
        self.storages: Dict[int, int] = {}

    def pack(self, tensor: torch.Tensor) -> torch.Tensor:
        storage = tensor.untyped_storage()
        self.storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    def total(self) -> int:
        return sum(self.storages.values())


def state_bytes(model: nn.Module, optimizer: torch.optim.Optimizer = None) -> int:
    """Bytes of the model's parameters and gradients and the optimizer's state."""
    tensors = [p for p in model.parameters()]
    tensors += [p.grad for p in model.parameters() if p.grad is not None]
    if optimizer is not None:
        tensors += [value for state in optimizer.state.values()
                    for value in state.values() if torch.is_tensor(value)]
    return sum(tensor.numel() * tensor.element_size() for tensor in tensors)


def start_peak(device: str) -> int:
    """Reset the CUDA peak counter; returns the bytes allocated now."""
    if device != 'cuda':
        return 0
    torch.cuda.synchronize()
    torch.cuda.reset_peak_memory_stats()
    return torch.cuda.memory_allocated()


def alone_peak_mb(resident: int, own_state: int) -> float:
    """The peak since :func:`start_peak`, as if only this model were resident."""
    return (torch.cuda.max_memory_allocated() - resident + own_state) / 2**20


def train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict,
               device: str) -> Dict[str, float]:
    """One optimizer step; returns its time and memory."""
    saved = SavedActivations()
    own_state = state_bytes(model, optimizer) if device == 'cuda' else 0
    resident = start_peak(device)
    synchronize(device)
    start = time.perf_counter()
    with torch.autograd.graph.saved_tensors_hooks(saved.pack, lambda tensor: tensor):
        losses = model(**batch, mode='loss')
        loss, _ = model.parse_losses(losses)
    optimizer.zero_grad()
    loss.backward()
    optimizer.step()
    synchronize(device)
    seconds = time.perf_counter() - start
    result = dict(seconds=seconds, saved_mb=saved.total() / 2**20)
    if device == 'cuda':
        result['peak_mb'] = alone_peak_mb(resident, own_state)
    return result


def predict(model: nn.Module, batch: dict, device: str) -> Dict[str, float]:
    """One prediction; returns its time (and peak memory on CUDA)."""
    own_state = state_bytes(model) if device == 'cuda' else 0
    resident = start_peak(device)
    start = time.perf_counter()
    with torch.no_grad():
        model(**batch, mode='predict')
    synchronize(device)
    result = dict(seconds=time.perf_counter() - start)
    if device == 'cuda':
        result['peak_mb'] = alone_peak_mb(resident, own_state)
    return result


def device_description(device: str) -> str:
    """The device, and on CUDA which implementation runs mmcv's ops."""
    if device != 'cuda':
        return f'device cpu, torch {torch.__version__}, {torch.get_num_threads()} threads'
    from lors_mmdet import compat
    ops = ('PyTorch implementations (mmcv with CPU ops only; lors_mmdet.compat route)'
           if compat.pytorch_ops_active() else
           'mmcv\'s compiled CUDA kernels')
    return (f'device {torch.cuda.get_device_name()}, torch {torch.__version__} '
            f'(CUDA {torch.version.cuda}), deformable attention and focal loss: {ops}')


def interleaved_medians(runs: Dict[str, Callable[[], Dict[str, float]]], repeats: int,
                        warmup: int) -> Dict[str, Dict[str, float]]:
    samples: Dict[str, List[Dict[str, float]]] = {name: [] for name in runs}
    for i in range(warmup + repeats):
        for name, run in runs.items():
            result = run()
            if i >= warmup:
                samples[name].append(result)
    return {name: {key: statistics.median(s[key] for s in results)
                   for key in results[0]} for name, results in samples.items()}


def benchmark_family(family: str, args: argparse.Namespace) -> List[str]:
    stock_config, lors_config = PAIRS[args.device][family]
    height, width = IMAGE[args.device]
    models = {'stock': build_detector(stock_config, args.device),
              'LORS': build_detector(lors_config, args.device)}
    num_classes = models['stock'].bbox_head.num_classes if hasattr(
        models['stock'], 'bbox_head') else models['stock'].roi_head.bbox_head[0].num_classes
    batch = synthetic_batch(models['stock'], args.batch_size, height, width,
                            num_classes=num_classes)
    rows = {}
    for name, model in models.items():
        rows[name] = dict(total=count_parameters(model).total,
                          decoder=part_parameters(model, lors_stack_paths_of(model))['decoder'],
                          checkpoint=checkpoint_megabytes(model))
    optimizers = {name: torch.optim.AdamW(model.parameters(), lr=1e-5)
                  for name, model in models.items()}
    for model in models.values():
        model.train()
    train = interleaved_medians(
        {name: (lambda n=name: train_step(models[n], optimizers[n], batch, args.device))
         for name in models}, args.repeats, args.warmup)
    models['LORS merged'] = merged_for_deployment(models['LORS'])
    stock_cfg = lors_and_stock_model_cfgs(load_config(lors_config))[1]
    if stock_cfg != load_config(stock_config).model:
        # the stock model of the LORS model's geometry (LORS-AdaMixer's G and
        # P_in differ from stock AdaMixer's), its own weights
        models['stock, LORS geometry'] = build_model(stock_cfg, device=args.device)
    for model in models.values():
        model.eval()
    infer = interleaved_medians(
        {name: (lambda n=name: predict(models[n], batch, args.device)) for name in models},
        args.repeats, args.warmup)

    stock, lors = rows['stock'], rows['LORS']
    memory_key = 'peak_mb' if args.device == 'cuda' else 'saved_mb'
    lines = [
        f'| {family} | total params | {stock["total"] / 1e6:.2f} M | '
        f'{lors["total"] / 1e6:.2f} M | {lors["total"] / stock["total"]:.3f} |',
        f'| {family} | decoder params | {stock["decoder"] / 1e6:.3f} M | '
        f'{lors["decoder"] / 1e6:.3f} M | {lors["decoder"] / stock["decoder"]:.3f} |',
        f'| {family} | checkpoint size | {stock["checkpoint"]:.1f} MiB | '
        f'{lors["checkpoint"]:.1f} MiB | {lors["checkpoint"] / stock["checkpoint"]:.3f} |',
        f'| {family} | train step time | {train["stock"]["seconds"] * 1e3:.0f} ms | '
        f'{train["LORS"]["seconds"] * 1e3:.0f} ms | '
        f'{train["LORS"]["seconds"] / train["stock"]["seconds"]:.3f} |',
        f'| {family} | train throughput | '
        f'{args.batch_size / train["stock"]["seconds"]:.2f} img/s | '
        f'{args.batch_size / train["LORS"]["seconds"]:.2f} img/s | '
        f'{train["stock"]["seconds"] / train["LORS"]["seconds"]:.3f} |',
        f'| {family} | train memory ({memory_key}) | {train["stock"][memory_key]:.0f} MiB | '
        f'{train["LORS"][memory_key]:.0f} MiB | '
        f'{train["LORS"][memory_key] / train["stock"][memory_key]:.3f} |',
        f'| {family} | inference latency (LORS as trained) | '
        f'{infer["stock"]["seconds"] * 1e3:.1f} ms | {infer["LORS"]["seconds"] * 1e3:.1f} ms | '
        f'{infer["LORS"]["seconds"] / infer["stock"]["seconds"]:.3f} |',
        f'| {family} | inference latency (LORS merged) | '
        f'{infer["stock"]["seconds"] * 1e3:.1f} ms | '
        f'{infer["LORS merged"]["seconds"] * 1e3:.1f} ms | '
        f'{infer["LORS merged"]["seconds"] / infer["stock"]["seconds"]:.3f} |',
        f'| {family} | inference latency, LORS merged / as trained | '
        f'{infer["LORS"]["seconds"] * 1e3:.1f} ms | '
        f'{infer["LORS merged"]["seconds"] * 1e3:.1f} ms | '
        f'{infer["LORS merged"]["seconds"] / infer["LORS"]["seconds"]:.3f} |',
    ]
    if args.device == 'cuda':
        lines += [
            f'| {family} | inference memory (peak_mb, {name}) | '
            f'{infer["stock"]["peak_mb"]:.0f} MiB | {infer[name]["peak_mb"]:.0f} MiB | '
            f'{infer[name]["peak_mb"] / infer["stock"]["peak_mb"]:.3f} |'
            for name in ('LORS', 'LORS merged')]
    if 'stock, LORS geometry' in infer:
        same = infer['stock, LORS geometry']['seconds']
        lines.append(
            f'| {family} | inference latency, LORS merged / stock of the same '
            f'geometry | {same * 1e3:.1f} ms | '
            f'{infer["LORS merged"]["seconds"] * 1e3:.1f} ms | '
            f'{infer["LORS merged"]["seconds"] / same:.3f} |')
    return lines


def main() -> None:
    args = parse_args()
    if args.device == 'cuda' and not torch.cuda.is_available():
        sys.exit('--device cuda: CUDA is not available on this machine')
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    MMLogger.get_current_instance().setLevel(logging.WARNING)  # init_weights reports
    height, width = IMAGE[args.device]
    out = open(args.out, 'w') if args.out else None

    def report(line: str) -> None:
        print(line, flush=True)
        if out is not None:
            out.write(line + '\n')
            out.flush()

    report(f'# `python tools/analysis/benchmark.py {" ".join(sys.argv[1:])}`')
    report(f'{device_description(args.device)}, batch {args.batch_size} x {height}x{width}, '
           f'median of {args.repeats} (after {args.warmup} warm-up), stock and LORS '
           'interleaved. CPU memory = bytes autograd saves for backward; '
           'CUDA memory = peak of the step as if the model were alone on the device.\n')
    report('| family | measure | stock | LORS | LORS / stock |')
    report('|---|---|---|---|---|')
    for family in args.families:
        start = time.perf_counter()
        for line in benchmark_family(family, args):
            report(line)
        print(f'({family}: {time.perf_counter() - start:.0f} s)', file=sys.stderr, flush=True)
    if out is not None:
        out.close()


if __name__ == '__main__':
    main()
