"""Benchmark the adaptive LORS branch: factored (fast) vs materialised path.

Runs AdaMixer's adaptive mixing with the LORS private parts (channel mixing
``x @ M`` then spatial mixing ``S @ x``, each followed by LayerNorm and ReLU)
at the LORS-AdaMixer shapes, forward + backward, along four paths:

- plain: the shared matrices only (AdaMixer without LORS private part);
- fast: ``GeneratedMatrices.apply_right/apply_left`` (factored, recomputing
  the low-rank intermediates in backward: the default);
- fast, stored: the same storing the intermediates (``recompute=False``);
- materialised: ``GeneratedMatrices.materialise`` then plain products;

and prints, measured in the same run, fast / materialised ratios of the whole
step and of the LORS part alone (each path minus plain):

- time: median of interleaved repeats;
- saved for backward: unique storage bytes packed by autograd
  (``torch.autograd.graph.saved_tensors_hooks``), parameters and inputs
  excluded;
- peak: the highest level of bytes held by the CPU allocator during the step,
  above the level at its start (from the profiler's allocation events).

Usage (the profiler logs to stderr)::

    python tools/analysis/benchmark_adaptive.py [--queries 100 300] \\
        [--repeats 4] 2>/dev/null
"""
import argparse
import statistics
import time
from typing import Callable, Dict, Sequence, Tuple

import torch
import torch.nn.functional as F
from torch.profiler import ProfilerActivity, profile

from lors_mmdet.lors import LorsAdaptive, SharedGenerator


def mixing(layer: LorsAdaptive, query: torch.Tensor, x: torch.Tensor,
           path: str) -> torch.Tensor:
    """AdaMixer's adaptive mixing with a LORS layer's generated matrices.

    Args:
        layer: the layer's private adaptive part.
        query: (B, N, query_dim).
        x: sampled features (B, N, G, P_in, c).
        path: ``'fast'`` applies the matrices factor by factor,
            ``'materialised'`` builds them first, ``'plain'`` uses the shared
            matrices only (AdaMixer without LORS private part, the reference).
    """
    if path == 'plain':
        channel, spatial = layer.shared(query)
        out = torch.matmul(x, channel)
    else:
        matrices = layer(query)
        if path == 'fast':
            out = matrices.apply_right(x, 0)
        else:
            out = torch.matmul(x, matrices.materialise(0))
    out = F.relu(F.layer_norm(out, out.shape[-2:]))
    if path == 'plain':
        out = torch.matmul(spatial, out)
    elif path == 'fast':
        out = matrices.apply_left(1, out)
    else:
        out = torch.matmul(matrices.materialise(1), out)
    return F.relu(F.layer_norm(out, out.shape[-2:]))


def measure_memory(step: Callable[[], torch.Tensor],
                   existing: Sequence[torch.Tensor]) -> Tuple[int, int]:
    """(saved, peak) bytes of one forward + backward.

    saved: unique storages autograd keeps for backward, except those of
    ``existing`` (parameters, inputs: they are held anyway). peak: the highest
    level of bytes allocated during the step above the level at its start.
    """
    skip = {t.untyped_storage().data_ptr() for t in existing}
    storages: Dict[int, int] = {}

    def pack(tensor):
        storage = tensor.untyped_storage()
        if storage.data_ptr() not in skip:
            storages[storage.data_ptr()] = storage.nbytes()
        return tensor

    with profile(activities=[ProfilerActivity.CPU],
                 profile_memory=True) as prof:
        with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
            loss = step()
        loss.backward()
    events = [e for e in prof.profiler.kineto_results.events()
              if e.name() == '[memory]']
    level = peak = 0
    for event in sorted(events, key=lambda e: e.start_ns()):
        level += event.nbytes()
        peak = max(peak, level)
    return sum(storages.values()), peak


def seconds(step: Callable[[], torch.Tensor]) -> float:
    start = time.perf_counter()
    step().backward()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
    parser.add_argument('--queries', type=int, nargs='+', default=[100, 300])
    parser.add_argument('--repeats', type=int, default=4)
    parser.add_argument('--batch', type=int, default=2)
    args = parser.parse_args()

    # LORS-AdaMixer: query dim 256, G=2, c=128, P_in=64, P_out=128, k=16, K=3.
    dim, groups, channels, p_in, p_out = 256, 2, 128, 64, 128
    torch.manual_seed(0)
    shared = SharedGenerator(dim, groups, [(channels, channels),
                                           (p_out, p_in)], num_layers=6)
    layer = LorsAdaptive(shared, core_size=16, adaptive_terms=3)
    with torch.no_grad():  # a trained state: nothing is zero
        shared.generator.weight.normal_(std=0.01)
        layer.lors_core_generator.weight.normal_(std=0.01)
    params = [*shared.parameters(), *layer.parameters()]
    print(f'torch {torch.__version__}, {torch.get_num_threads()} threads, '
          f'batch {args.batch}, float32, forward + backward, '
          f'median of {args.repeats} interleaved repeats')
    # 'fast, stored': the factored path storing its intermediates instead of
    # recomputing them in backward (LorsAdaptive(recompute=False)).
    paths = ('plain', 'fast', 'fast, stored', 'materialised')
    for num_queries in args.queries:
        query = torch.randn(args.batch, num_queries, dim, requires_grad=True)
        x = torch.randn(args.batch, num_queries, groups, p_in, channels,
                        requires_grad=True)

        def step(path):
            layer.recompute = path != 'fast, stored'
            return mixing(layer, query, x, path.split(',')[0]).sum()

        def fresh(path):
            # Free the previous gradients here, outside of any measurement.
            for tensor in (query, x, *params):
                tensor.grad = None
            return lambda: step(path)

        for p in paths:  # warm-up: first calls allocate caches, workspaces
            seconds(fresh(p))
        memory = {p: measure_memory(fresh(p), [query, x, *params])
                  for p in paths}
        times = {p: [] for p in paths}
        for _ in range(args.repeats):  # interleaved: drift hits all alike
            for p in paths:
                times[p].append(seconds(fresh(p)))
        ms = {p: statistics.median(t) * 1e3 for p, t in times.items()}

        print(f'\n{num_queries} queries')
        print('| path | time ms | saved for backward MiB | peak MiB |')
        print('|---|---:|---:|---:|')
        for p in paths:
            saved, peak = memory[p]
            print(f'| {p} | {ms[p]:.0f} | {saved / 2**20:.1f} | '
                  f'{peak / 2**20:.1f} |')
        fast = (ms['fast'], *memory['fast'])
        mat = (ms['materialised'], *memory['materialised'])
        plain = (ms['plain'], *memory['plain'])
        ratios = [f / m for f, m in zip(fast, mat)]
        print('| fast / materialised | ' +
              ' | '.join(f'{r:.2f}x' for r in ratios) + ' |')
        ratios = [(f - p) / (m - p) for f, m, p in zip(fast, mat, plain)]
        print('| LORS part (above plain): fast / materialised | ' +
              ' | '.join(f'{r:.2f}x' for r in ratios) + ' |')

if __name__ == '__main__':
    main()
