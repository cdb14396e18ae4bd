"""What a trained detector, stock or LORS, learned, read from the checkpoints of its runs.

For the accuracy study (docs/accuracy.md). (LORS-)AdaMixer runs (:func:`diagnose_run`):
each stage's own AP, the size of each LORS stage's private residual next to the shared part
it adds to, and how strongly each group of decoder parameters is pushed (gradient norms on a
fixed training batch) and moved (update norms between checkpoints). Any stock or LORS
detector with layer stacks: each layer's private residual (:func:`run_residual_sizes`), how
far and how much on its own each layer moved (:func:`compared_layer_updates`), which layer
a shared weight's gradient serves (:func:`run_layer_gradients`), each DETR decoder layer's
AP (:func:`run_layer_ap`), the logged per-stage losses (:func:`logged_losses`).

Parameter groups of the AdaMixer decoder (``roi_head``):

- ``shared mixing``: LORS's stack-wide mixing generator and output projection;
- ``shared other``: other shared weights of the stack (``model.lors.decoder``'s
  static targets besides the mixing);
- ``s{i} mixing``: stage ``i``'s own mixing (stock AdaMixer: its generator and output
  projection; LORS: the private core generator, L, R, and the projection's A, B, bias);
- ``s{i} other``: the rest of stage ``i`` (attention, sampling offsets, FFN, heads).
"""
import copy
import os.path as osp
import uuid
from collections import defaultdict
from contextlib import contextmanager
from typing import Any, Callable, Dict, Iterator, List, Optional

import torch
from mmengine.config import Config
from torch import Tensor, nn

from lors_mmdet.apis.steps import load_config, read_checkpoint
from lors_mmdet.lors import LorsAdaptive, LorsLinear


def decoder_parameter_group(name: str) -> str:
    """Group of a ``roi_head`` parameter name (see the module doc)."""
    parts = name.split('.')
    if parts[0] == 'lors_bbox_head':  # the LORS stack of the stages
        return 'shared mixing' if 'adaptive_mixing' in parts else 'shared other'

    if parts[0] == 'bbox_head' and len(parts) > 2:
        kind = 'mixing' if parts[2] == 'adaptive_mixing' else 'other'
        return f's{parts[1]} {kind}'
    return 'other'


def grouped_norms(tensors: Dict[str, Tensor]) -> Dict[str, float]:
    """Frobenius norm of each parameter group (the root of its tensors' summed
    squares), keyed as :func:`decoder_parameter_group`."""
    squares: Dict[str, float] = defaultdict(float)
    for name, tensor in tensors.items():
        squares[decoder_parameter_group(name)] += float(tensor.detach().double().pow(2).sum())
    return {group: value**0.5 for group, value in sorted(squares.items())}


def decoder_state(state_dict: Dict[str, Tensor]) -> Dict[str, Tensor]:
    """The ``roi_head`` tensors of a detector state dict, prefix removed."""
    prefix = 'roi_head.'
    return {k[len(prefix):]: v for k, v in state_dict.items() if k.startswith(prefix)}


def update_norms(before: Dict[str, Tensor], after: Dict[str, Tensor]) -> Dict[str, dict]:
    """Per group: norm of the change between two decoder states and that norm
    relative to the group's norm before.

    Args:
        before: decoder state (:func:`decoder_state`) at the earlier checkpoint.
        after: decoder state at the later one, same keys.
    """
    if before.keys() != after.keys():
        raise ValueError(f'the two checkpoints hold different decoder tensors: '
                         f'{sorted(before.keys() ^ after.keys())[:5]}')
    change = grouped_norms({k: after[k].double() - before[k].double() for k in after})
    size = grouped_norms(before)
    return {g: dict(norm=change[g], relative=change[g] / max(size[g], 1e-12))
            for g in change}


@torch.no_grad()
def private_residual_sizes(decoder: nn.Module,
                           queries: List[Tensor]) -> Dict[str, dict]:
    """How large each LORS stage's private residual is next to the shared part.

    Static: ``||B A|| / ||W_shared||`` of the mixing output projection. Adaptive: for
    the channel (M) and spatial (S) mixing matrices, the mean over the queries of
    ``||M_i(q) - M_shared(q)|| / ||M_shared(q)||`` (Frobenius, per query and group).

    Args:
        decoder: the decoder of a LORS-AdaMixer (AdaMixer + ``model.lors``
            with the mixing generator adaptive and its projection shared).
        queries: per stage, the queries (..., content_dim) that entered its mixing.
    """
    sizes = {}
    for stage, (head, query) in enumerate(zip(decoder.bbox_head, queries)):
        mixing = head.adaptive_mixing
        shared_w = mixing.out_proj.shared.weight
        lors_b, lors_a = mixing.out_proj.lors_B, mixing.out_proj.lors_A
        static = (lors_b @ lors_a).norm() / shared_w.norm()
        mats = mixing.parameter_generator.matrices(query)
        adaptive = {}
        for j, matrix in enumerate(('M', 'S')):
            shared = mats.shared[j]
            private = mats.materialise(j) - shared
            ratio = private.flatten(-2).norm(dim=-1) / shared.flatten(-2).norm(
                dim=-1).clamp_min(1e-12)
            adaptive[matrix] = float(ratio.mean())
        sizes[f's{stage}'] = dict(static_out_proj=float(static), **adaptive)
    return sizes


def stack_residual_sizes(model: nn.Module) -> Dict[str, List[float]]:
    """For every LORS stack of any model, each layer's static private residual next
    to the shared weight: the mean over the stack's projections of
    ``||B_i A_i|| / ||W_shared||`` (Frobenius).

    Args:
        model: a model with LORS stacks (``lors_mmdet.lors.find_lors_stacks``).

    Returns:
        ``{stack path: [ratio of layer 0, layer 1, ...]}``.
    """
    from lors_mmdet.lors import find_lors_stacks
    sizes = {}
    with torch.no_grad():
        for path, stack in find_lors_stacks(model):
            per_layer = [[] for _ in stack.layers]
            for projection in stack.plans:
                for i, lors in enumerate(stack.lors_linears(projection)):
                    residual = (lors.lors_B @ lors.lors_A).norm()
                    per_layer[i].append(float(residual / lors.shared.weight.norm()))
            sizes[path] = [sum(r) / len(r) if r else 0.0 for r in per_layer]
    return sizes


def _checkpoint_models(run_dir: str):
    """``(file name, model)`` at every checkpoint of a run: one model of the run's
    config, loaded strictly with each checkpoint in turn."""
    from lors_mmdet.apis.steps import build_model, load_strictly
    model = build_model(run_config(run_dir).model)
    for path in run_checkpoints(run_dir):
        load_strictly(model, read_checkpoint(path)[0], path)
        yield osp.basename(path), model


def run_residual_sizes(run_dir: str) -> Dict[str, Dict[str, List[float]]]:
    """:func:`stack_residual_sizes` at every checkpoint of a run, by file name."""
    return {name: stack_residual_sizes(model) for name, model in _checkpoint_models(run_dir)}


def stack_containers(model: nn.Module) -> Dict[str, int]:
    """``{container path: number of layers}`` of every LORS stack in ``model``
    (the module list that holds the stack's layers, e.g. ``'encoder.layers'``).

    Args:
        model: a model with LORS stacks (``lors_mmdet.lors.find_lors_stacks``).
    """
    from lors_mmdet.lors import find_lors_stacks
    containers = {}
    for path, stack in find_lors_stacks(model):
        if stack.layers_path is None:
            raise ValueError(f'the LORS stack {path!r} has no layer container path')
        owner = path.rpartition('.')[0]
        containers['.'.join(p for p in (owner, stack.layers_path) if p)] = len(stack.layers)
    return containers


def stock_state(model: nn.Module) -> Dict[str, Tensor]:
    """The model's state dict with stock keys, in float64: LORS stacks merged (on a
    copy), so each layer's matrices are its effective weights ``W_shared + B A``."""
    from lors_mmdet.lors import find_lors_stacks, merge_lors
    if find_lors_stacks(model):
        model = copy.deepcopy(model)
        merge_lors(model)
    return {k: v.detach().double() for k, v in model.state_dict().items()}


def layer_updates(before: Dict[str, Tensor], after: Dict[str, Tensor],
                  containers: Dict[str, int]) -> Dict[str, Dict[str, List[float]]]:
    """How far each layer's weight matrices moved between two states, and how much of
    that move was the layer's own.

    Over all 2-D tensors of layer ``i`` (Frobenius), with ``D_i = W_i(after) -
    W_i(before)`` and ``mean D`` the mean over the container's layers:

    - ``moved``: ``||D_i|| / ||W_i(before)||``;
    - ``own``: ``||D_i - mean D|| / ||D_i||``, the part of the step not shared by all
      layers (about ``sqrt(1 - 1/N)`` for steps independent across N layers, 0 when
      the layers move together).

    The same for a stock model and a LORS one (effective weights,
    :func:`stock_state`), so the two can be compared layer by layer.

    Args:
        before: :func:`stock_state` at the earlier checkpoint.
        after: :func:`stock_state` at the later one.
        containers: :func:`stack_containers` (``{container path: layers}``).
    """
    def squared(tensors) -> float:
        return sum(float(t.pow(2).sum()) for t in tensors)

    result = {}
    for container, num_layers in containers.items():
        steps, sizes = [], []
        for i in range(num_layers):
            prefix = f'{container}.{i}.'
            keys = {k[len(prefix):] for k, v in before.items()
                    if k.startswith(prefix) and v.dim() == 2}
            if not keys:
                raise KeyError(f'no weight matrix under {prefix!r} in the checkpoint')
            if steps and keys != steps[0].keys():
                raise ValueError(f'layer {i} of {container!r} holds other matrices than '
                                 f'layer 0: {sorted(keys ^ steps[0].keys())[:5]}')
            steps.append({k: after[prefix + k] - before[prefix + k] for k in keys})
            sizes.append(squared(before[prefix + k] for k in keys))
        mean = {k: sum(step[k] for step in steps) / num_layers for k in steps[0]}
        moved, own = [], []
        for step, size in zip(steps, sizes):
            change = squared(step.values())
            moved.append((change / max(size, 1e-24))**0.5)
            own.append((squared(step[k] - mean[k] for k in step) / max(change, 1e-24))**0.5)
        result[container] = dict(moved=moved, own=own)
    return result


def run_layer_updates(run_dir: str, containers: Dict[str, int]
                      ) -> Dict[str, Dict[str, Dict[str, List[float]]]]:
    """:func:`layer_updates` between consecutive checkpoints of a run (stock or
    LORS), keyed ``'iter_A.pth -> iter_B.pth'``.

    Args:
        run_dir: the run's work dir.
        containers: the layer containers to measure (:func:`stack_containers` of
            the LORS model it is compared with).
    """
    result, previous = {}, None
    for name, model in _checkpoint_models(run_dir):
        state = stock_state(model)
        if previous is not None:
            result[f'{previous[0]} -> {name}'] = layer_updates(previous[1], state,
                                                                containers)
        previous = (name, state)
    return result


def lors_containers(run_dirs: List[str]) -> Dict[str, int]:
    """:func:`stack_containers` of the first of ``run_dirs`` that is a LORS run: the
    layers to compare across the stock and LORS runs of one family."""
    from lors_mmdet.apis.steps import build_model
    for run_dir in run_dirs:
        containers = stack_containers(build_model(run_config(run_dir).model))
        if containers:
            return containers
    raise ValueError(f'none of {run_dirs} is a LORS run: its stacks name the layers '
                     'to compare')


def compared_layer_updates(run_dirs: List[str]
                           ) -> Dict[str, Dict[str, Dict[str, Dict[str, List[float]]]]]:
    """:func:`run_layer_updates` of stock and LORS runs over the same layers: those
    of the LORS stacks of the first run that has any (:func:`lors_containers`).

    Args:
        run_dirs: work dirs of runs of one detector family, stock and LORS.

    Returns:
        ``{run dir: {checkpoint pair: {container: {'moved': [per layer], 'own':
        [per layer]}}}}`` (:func:`layer_updates`).
    """
    containers = lors_containers(run_dirs)
    return {run_dir: run_layer_updates(run_dir, containers) for run_dir in run_dirs}


def layer_gradients(model: nn.Module, batches: List[dict], containers: Dict[str, int],
                    seed: int = 0) -> Dict[str, Dict[str, List[float]]]:
    """Which layer the gradient of a weight shared by a container's layers would serve.

    The gradient of the training loss (summed over ``batches``) with respect to each
    layer's effective weight matrices ``g_i`` (a LORS model merged on a copy, so stock
    and LORS models are measured alike), over the matrices every layer of the container
    has (all of a DINO layer's; those a shared weight can hold). A weight shared by all
    the container's layers gets ``sum_j g_j`` (a stack of one layer group; the sums
    are over the whole container whatever the stack's ``layer_groups``):

    - ``norm``: ``||g_i||``;
    - ``share``: ``||g_i|| / sum_j ||g_j||``, layer ``i``'s part of the gradient's size;
    - ``align``: ``cos(g_i, sum_j g_j)``, how well a step along the summed gradient
      serves layer ``i`` (1: as well as its own gradient);
    - ``others``: ``cos(g_i, sum_{j != i} g_j)``, whether the other layers push the
      shared weight where layer ``i`` would (``align`` rises with ``share`` alone, since
      ``g_i`` is part of the sum; this one does not).

    Args:
        model: a detector, stock or with LORS stacks.
        batches: training batches of its data loader.
        containers: the layer containers to measure (:func:`stack_containers`).
        seed: torch seed set before each batch (DINO's denoising queries are drawn).
    """
    from lors_mmdet.lors import find_lors_stacks, merge_lors
    model = copy.deepcopy(model)
    if find_lors_stacks(model):
        merge_lors(model)
    model.train()
    model.zero_grad()
    for batch in batches:
        torch.manual_seed(seed)
        losses = model(**model.data_preprocessor(batch, True), mode='loss')
        model.parse_losses(losses)[0].backward()
    result = {}
    for container, num_layers in containers.items():
        layers = model.get_submodule(container)
        matrices = [{n: p for n, p in layers[i].named_parameters() if p.dim() == 2}
                    for i in range(num_layers)]
        common = sorted(set.intersection(*(set(m) for m in matrices)))
        if not common:
            raise KeyError(f'the layers of {container!r} have no weight matrix in common')
        grads = [torch.cat([(m[n].grad if m[n].grad is not None
                             else torch.zeros_like(m[n])).double().flatten() for n in common])
                 for m in matrices]
        total = sum(grads)

        def cos(a: Tensor, b: Tensor) -> float:
            return float(a @ b) / max(float(a.norm() * b.norm()), 1e-300)

        norms = [float(g.norm()) for g in grads]
        result[container] = dict(
            norm=norms, share=[n / max(sum(norms), 1e-300) for n in norms],
            align=[cos(g, total) for g in grads],
            others=[cos(g, total - g) for g in grads])
    return result


def run_layer_gradients(run_dir: str, containers: Dict[str, int],
                        num_batches: int = 4) -> Dict[str, Dict[str, List[float]]]:
    """:func:`layer_gradients` at a run's last checkpoint, on the first ``num_batches``
    batches of its training loader (sampled with the run's seed: the same batches for
    every run of that seed).

    Args:
        run_dir: the run's work dir.
        containers: the layer containers to measure.
        num_batches: how many training batches the gradient sums over.
    """
    import itertools
    import tempfile
    cfg = run_config(run_dir)
    seed = cfg.get('randomness', {}).get('seed', 0)
    with tempfile.TemporaryDirectory() as scratch:
        runner = _checkpoint_runner(cfg, _run_checkpoints_or_error(run_dir)[-1], scratch)
        torch.manual_seed(seed)
        loader = runner.build_dataloader(cfg.train_dataloader, seed=seed)
        batches = list(itertools.islice(loader, num_batches))
        return layer_gradients(runner.model, batches, containers, seed)


def _stage_order(key: str) -> tuple:
    """Sort key of logged loss names: the encoder's first, then the stages / decoder
    layers by index (``s0.``, ``d0.``), the last stage's bare name after them; the
    denoising queries' (``dn_``) after the matching ones."""
    import re
    match = re.match(r'([sd])(\d+)\.', key)
    position = -1 if key.startswith('enc') else (int(match.group(2)) if match else 1 << 30)
    return ('dn_' in key, position, key)


def logged_records(run_dir: str) -> List[dict]:
    """The records mmengine logged for a run (``*/vis_data/scalars.json``: one folder per
    start or resume), in the order they were written.

    Args:
        run_dir: the run's work dir.
    """
    import glob
    import json
    records = []
    for path in sorted(glob.glob(osp.join(run_dir, '*', 'vis_data', 'scalars.json'))):
        with open(path) as f:
            records += [json.loads(line) for line in f if line.strip()]
    return records


def logged_losses(run_dir: str, suffix: str = 'loss_cls',
                  from_iter: Optional[int] = None) -> Dict[str, float]:
    """Each logged loss ending with ``suffix`` (``d0.loss_cls``, ``s3.loss_cls``,
    ``loss_cls``, ...), averaged over the logged training iterations from ``from_iter``
    on: per stage, how far the run's training got.

    Args:
        run_dir: the run's work dir (mmengine's ``*/vis_data/scalars.json``).
        suffix: which losses.
        from_iter: first iteration averaged; default the last fifth of the
            logged iterations.
    """
    records = [r for r in logged_records(run_dir) if 'loss' in r and 'iter' in r]
    if not records:
        raise FileNotFoundError(f'{run_dir}: no logged training losses '
                                '(*/vis_data/scalars.json)')
    last = max(r['iter'] for r in records)
    start = from_iter if from_iter is not None else last - last // 5
    kept = {r['iter']: r for r in records if r['iter'] >= start}  # a resume logs twice
    if not kept:
        raise ValueError(f'{run_dir}: no logged iteration at or after {start} '
                         f'(the last is {last})')
    keys = sorted({k for r in kept.values() for k in r if k.endswith(suffix)},
                  key=_stage_order)
    return {k: sum(r[k] for r in kept.values() if k in r)
            / sum(1 for r in kept.values() if k in r) for k in keys}


def _mixing_queries(decoder: nn.Module):
    """Forward pre-hooks that record each stage's mixing query; returns (list, handles)."""
    queries: List[Optional[Tensor]] = [None] * len(decoder.bbox_head)
    handles = []
    for stage, head in enumerate(decoder.bbox_head):
        def hook(module, args, stage=stage):
            queries[stage] = args[1].detach()
        handles.append(head.adaptive_mixing.register_forward_pre_hook(hook))
    return queries, handles


def _checkpoint_runner(cfg: Config, checkpoint: str, work_dir: str):
    """An mmengine Runner of the run's config with ``checkpoint`` loaded, logging to
    ``work_dir`` (not the run's own work dir)."""
    from mmengine.runner import Runner

    cfg = copy.deepcopy(cfg)
    cfg.work_dir = work_dir
    # mmengine keeps one visualizer per name (mmdet's configs: 'visualizer'): a second
    # runner in the process would write to the first one's (deleted) log dir
    if cfg.get('visualizer') is not None:
        cfg.visualizer.name = f'diagnose_{uuid.uuid4().hex[:8]}'
    cfg.load_from = checkpoint
    cfg.resume = False
    cfg.default_hooks.pop('visualization', None)
    cfg.train_cfg = cfg.get('train_cfg')
    runner = Runner.from_cfg(cfg)
    runner.load_checkpoint(checkpoint, map_location='cpu')
    return runner


def diagnose_checkpoint(cfg: Config, checkpoint: str, work_dir: str,
                        stage_ap: bool = False) -> dict:
    """Diagnostics of one checkpoint of a (LORS-)AdaMixer run.

    Gradient norms per parameter group on the first training batch (the config's
    own loader and seed), weight norms, the private residual sizes of a LORS
    decoder on that batch's queries and, with ``stage_ap``, the COCO AP of every
    stage's own predictions on the val set.

    Args:
        cfg: the run's config.
        checkpoint: its checkpoint file.
        work_dir: where mmengine may write its logs (not the run's own work dir).
        stage_ap: also evaluate every stage (one val pass per stage).
    """
    runner = _checkpoint_runner(cfg, checkpoint, work_dir)
    model = runner.model
    decoder = model.roi_head
    result = dict(checkpoint=osp.basename(checkpoint),
                  weight_norms=grouped_norms(dict(decoder.named_parameters())))

    torch.manual_seed(cfg.get('randomness', {}).get('seed', 0))
    batch = next(iter(runner.build_dataloader(cfg.train_dataloader)))
    model.train()
    mixing = decoder.bbox_head[0].adaptive_mixing
    lors = isinstance(mixing.parameter_generator, LorsAdaptive) and \
        isinstance(mixing.out_proj, LorsLinear)
    queries, handles = _mixing_queries(decoder) if lors else ([], [])
    try:
        data = model.data_preprocessor(batch, True)
        losses = model(**data, mode='loss')
        loss, _ = model.parse_losses(losses)
        model.zero_grad()
        loss.backward()
    finally:
        for handle in handles:
            handle.remove()
    result['grad_norms'] = grouped_norms({
        name: p.grad for name, p in decoder.named_parameters() if p.grad is not None})
    result['stage_losses'] = {k: float(v) for k, v in losses.items()
                              if k.startswith('s') and 'loss' in k}
    model.zero_grad()
    if lors:
        result['private_residual'] = private_residual_sizes(decoder, queries)
    if stage_ap:
        num_stages = decoder.num_stages
        result['stage_ap'] = {}
        try:
            for stage in range(num_stages):
                decoder.num_stages = stage + 1
                metrics = runner.test()
                result['stage_ap'][f's{stage}'] = float(metrics['coco/bbox_mAP'])
        finally:
            decoder.num_stages = num_stages
    return result


def run_checkpoints(run_dir: str) -> List[str]:
    """The ``iter_N.pth`` files of a run, by N."""
    import glob
    import re
    found = []
    for path in glob.glob(osp.join(run_dir, 'iter_*.pth')):
        match = re.fullmatch(r'iter_(\d+)\.pth', osp.basename(path))
        if match:
            found.append((int(match.group(1)), path))
    return [path for _, path in sorted(found)]


def _run_checkpoints_or_error(run_dir: str) -> List[str]:
    checkpoints = run_checkpoints(run_dir)
    if not checkpoints:
        raise FileNotFoundError(f'{run_dir}: no iter_*.pth checkpoint')
    return checkpoints


def kept_in_run(run_dir: str, file_name: str, force: bool, compute: Callable[[], Any]) -> Any:
    """``compute()``, kept as JSON in ``run_dir/file_name`` (written atomically) and read
    back from there on the next call unless ``force``.

    Args:
        run_dir: the run's work dir.
        file_name: the JSON file's name in it.
        force: recompute even if the file exists.
        compute: makes the result (JSON-serialisable).
    """
    import json

    from lors_mmdet.engine.atomic_checkpoint import AtomicLocalBackend
    out = osp.join(run_dir, file_name)
    if osp.exists(out) and not force:
        with open(out) as f:
            return json.load(f)
    result = compute()
    AtomicLocalBackend().put_text(json.dumps(result, indent=1), out)
    return result


def run_config(run_dir: str) -> Config:
    """The config mmengine dumped into the run dir (the options of the run applied)."""
    import glob
    dumped = [p for p in glob.glob(osp.join(run_dir, '*.py'))]
    if len(dumped) != 1:
        raise FileNotFoundError(f'{run_dir}: expected the one config mmengine dumps '
                                f'there, found {dumped}')
    return load_config(dumped[0])


def diagnose_run(run_dir: str, stage_ap: bool = False, force: bool = False) -> dict:
    """:func:`diagnose_checkpoint` of every checkpoint of a run, and the update norms
    between consecutive ones; written to ``run_dir/diagnostics.json``.

    Args:
        run_dir: the run's work dir (its dumped config and ``iter_*.pth``).
        stage_ap: per-stage AP at the last checkpoint.
        force: recompute even if ``diagnostics.json`` exists.
    """
    return kept_in_run(run_dir, 'diagnostics.json', force, lambda: _diagnose_run(
        run_dir, stage_ap))


def _diagnose_run(run_dir: str, stage_ap: bool) -> dict:
    import tempfile
    checkpoints = _run_checkpoints_or_error(run_dir)
    cfg = run_config(run_dir)
    result = dict(run_dir=run_dir, checkpoints=[])
    previous = None
    with tempfile.TemporaryDirectory() as scratch:
        for i, path in enumerate(checkpoints):
            entry = diagnose_checkpoint(cfg, path, scratch,
                                        stage_ap=stage_ap and i == len(checkpoints) - 1)
            state = decoder_state(read_checkpoint(path)[0])
            if previous is not None:
                entry['update_norms'] = update_norms(previous, state)
            previous = state
            result['checkpoints'].append(entry)
    return result


@contextmanager
def decoder_cut(head: nn.Module, layers: int) -> Iterator[None]:
    """Within the block, a DETR-family head (``model.bbox_head``) keeps only its first
    ``layers`` decoder layers' outputs, so that the detector predicts from layer
    ``layers - 1``: the decoder cut after that layer (a layer never sees the ones above it).

    Args:
        head: the head; its ``forward`` returns per-layer tensors stacked on the first dim.
        layers: how many decoder layers to keep, 1 to the decoder's depth.
    """
    forward = head.forward

    def cut(*args, **kwargs):
        outputs = forward(*args, **kwargs)
        if not 1 <= layers <= len(outputs[0]):
            raise ValueError(f'decoder_cut: layers={layers}, the decoder has '
                             f'{len(outputs[0])} layers')
        return tuple(output[:layers] for output in outputs)

    head.forward = cut
    try:
        yield
    finally:
        del head.forward


def run_layer_ap(run_dir: str, force: bool = False) -> Dict[str, float]:
    """COCO AP of each decoder layer's own predictions (:func:`decoder_cut`) of a
    DETR-family run at its last checkpoint on the run's val set, ``{'d0': AP, ...}``;
    kept in ``run_dir/layer_ap.json`` (``force`` recomputes).

    Args:
        run_dir: the run's work dir (its dumped config and ``iter_*.pth``).
        force: recompute even if ``layer_ap.json`` exists.
    """
    return kept_in_run(run_dir, 'layer_ap.json', force, lambda: _layer_ap(run_dir))


def _layer_ap(run_dir: str) -> Dict[str, float]:
    import tempfile
    checkpoints = _run_checkpoints_or_error(run_dir)
    with tempfile.TemporaryDirectory() as scratch:
        runner = _checkpoint_runner(run_config(run_dir), checkpoint=checkpoints[-1],
                                    work_dir=scratch)
        model = runner.model
        if not hasattr(model, 'decoder') or not hasattr(model, 'bbox_head'):
            raise TypeError(f'{run_dir}: {type(model).__name__} is not a DETR-family '
                            'detector (no decoder and bbox_head)')
        result = {}
        for layer in range(model.decoder.num_layers):
            with decoder_cut(model.bbox_head, layer + 1):
                result[f'd{layer}'] = float(runner.test()['coco/bbox_mAP'])
    return result


def paired_difference(treated: List[float], baseline: List[float],
                      confidence: float = 0.95) -> dict:
    """Mean of ``treated[i] - baseline[i]`` (pairs: same seed) and its two-sided
    Student-t confidence interval.

    Args:
        treated: one value per seed.
        baseline: the same seeds' values of the other model, in the same order.
        confidence: level of the interval.

    Returns:
        dict(n, mean, std, low, high); low = high = mean for one pair.
    """
    from scipy import stats
    if len(treated) != len(baseline) or not treated:
        raise ValueError(f'need the same positive number of values on both sides, got '
                         f'{len(treated)} and {len(baseline)}')
    diffs = [t - b for t, b in zip(treated, baseline)]
    n = len(diffs)
    mean = sum(diffs) / n
    if n == 1:
        return dict(n=1, mean=mean, std=0.0, low=mean, high=mean)
    std = (sum((d - mean)**2 for d in diffs) / (n - 1))**0.5
    half = float(stats.t.ppf(0.5 + confidence / 2, n - 1)) * std / n**0.5
    return dict(n=n, mean=mean, std=std, low=mean - half, high=mean + half)


def mean_std(values: List[float]) -> str:
    """``'mean ± std'`` (sample std) to 3 decimals; the mean alone for one value."""
    mean = sum(values) / len(values)
    if len(values) < 2:
        return f'{mean:.3f}'
    std = (sum((v - mean)**2 for v in values) / (len(values) - 1))**0.5
    return f'{mean:.3f} ± {std:.3f}'


def format_diagnostics(runs: Dict[str, List[dict]]) -> str:
    """Markdown tables of :func:`diagnose_run` results, mean (± std) over seeds.

    Args:
        runs: ``{model name: [diagnostics of each seed]}``.
    """
    out = []
    stage_ap = {name: [d['checkpoints'][-1]['stage_ap'] for d in ds
                       if 'stage_ap' in d['checkpoints'][-1]] for name, ds in runs.items()}
    stages = sorted({s for aps in stage_ap.values() for ap in aps for s in ap},
                    key=lambda s: int(s[1:]))
    if any(stage_ap.values()):
        out += ['Each stage\'s own AP (the decoder cut after that stage), last checkpoint:',
                '', '| model | seeds | ' + ' | '.join(stages) + ' |',
                '|---|---|' + '---|' * len(stages)]
        for name, aps in stage_ap.items():
            if aps:
                out.append(f'| {name} | {len(aps)} | ' + ' | '.join(
                    mean_std([ap[s] for ap in aps]) for s in stages) + ' |')
        out.append('')
    out += ['Classification loss of each stage on one fixed training batch:', '',
            '| model | checkpoint | ' + ' | '.join(stages) + ' |',
            '|---|---|' + '---|' * len(stages)]
    for name, ds in runs.items():
        for k, entry in enumerate(ds[0]['checkpoints']):
            cells = [mean_std([d['checkpoints'][k]['stage_losses'][f'{s}.loss_cls']
                                for d in ds]) for s in stages]
            out.append(f'| {name} | {entry["checkpoint"]} | ' + ' | '.join(cells) + ' |')
    out.append('')
    lors = {n: ds for n, ds in runs.items() if 'private_residual' in ds[0]['checkpoints'][0]}
    for name, ds in lors.items():
        out += [f'{name}: size of each stage\'s private residual next to the shared part '
                '(static: |B A| / |W_shared| of the mixing output projection; M, S: mean '
                'over queries of |private| / |shared| of the generated matrices):', '',
                '| checkpoint | ' + ' | '.join(f'{s} static / M / S' for s in stages) + ' |',
                '|---|' + '---|' * len(stages)]
        for k, entry in enumerate(ds[0]['checkpoints']):
            cells = []
            for s in stages:
                parts = [sum(d['checkpoints'][k]['private_residual'][s][key] for d in ds)
                         / len(ds) for key in ('static_out_proj', 'M', 'S')]
                cells.append(' / '.join(f'{p:.3f}' for p in parts))
            out.append(f'| {entry["checkpoint"]} | ' + ' | '.join(cells) + ' |')
        out.append('')
    for what, key in (('Gradient norm', 'grad_norms'), ('Relative update since the '
                                                        'previous checkpoint',
                                                        'update_norms')):
        if not any(key in e for ds in runs.values() for e in ds[0]['checkpoints']):
            continue
        out += [f'{what} per parameter group (mean over seeds):', '']
        for name, ds in runs.items():
            groups = sorted(ds[0]['checkpoints'][-1][key],
                            key=lambda g: (g.split()[0] != 'shared', g))
            checkpoints = [k for k, e in enumerate(ds[0]['checkpoints']) if key in e]
            out += [f'| {name} | ' + ' | '.join(ds[0]['checkpoints'][k]['checkpoint']
                                                 for k in checkpoints) + ' |',
                    '|---|' + '---|' * len(checkpoints)]
            for group in groups:
                cells = []
                for k in checkpoints:
                    values = [d['checkpoints'][k][key][group] for d in ds]
                    if key == 'update_norms':
                        values = [v['relative'] for v in values]
                    cells.append(f'{sum(values) / len(values):.4g}')
                out.append(f'| {group} | ' + ' | '.join(cells) + ' |')
            out.append('')
    paired = format_paired_stages(runs)
    if paired:
        out += [paired]
    return '\n'.join(out).rstrip() + '\n'


def format_paired_stages(runs: Dict[str, List[dict]]) -> str:
    """Markdown tables of every run against the first of ``runs`` (the baseline), paired
    by seed (the ``seed<S>`` folder each run dir is): the mean difference and 95%
    interval (:func:`paired_difference`) of each stage's own AP, of each stage's gain over
    the stage before it, and of each stage's losses at each checkpoint both runs have.
    Empty when no two runs share a seed.

    Args:
        runs: ``{model name: [diagnostics of each seed]}`` (:func:`diagnose_run`).
    """
    def seed(diagnostics: dict) -> str:
        return osp.basename(osp.normpath(diagnostics['run_dir']))

    def cell(ours: List[float], theirs: List[float]) -> str:
        d = paired_difference(ours, theirs)
        return f'{d["mean"]:+.3f} [{d["low"]:+.3f}, {d["high"]:+.3f}]'

    names = list(runs)
    out = []
    for name in names[1:]:
        baseline = {seed(d): d for d in runs[names[0]]}
        pairs = [(d, baseline[seed(d)]) for d in runs[name] if seed(d) in baseline]
        if not pairs:
            continue
        stages = sorted({key.split('.')[0] for d, _ in pairs
                         for key in d['checkpoints'][-1]['stage_losses']},
                        key=lambda s: int(s[1:]))
        rows = []
        if all('stage_ap' in d['checkpoints'][-1] for pair in pairs for d in pair):
            aps = [[pair[i]['checkpoints'][-1]['stage_ap'] for pair in pairs]
                   for i in (0, 1)]
            rows.append('| own AP, last checkpoint | ' + ' | '.join(
                cell([ap[s] for ap in aps[0]], [ap[s] for ap in aps[1]])
                for s in stages) + ' |')
            rows.append('| gain over the stage before | - | ' + ' | '.join(
                cell([ap[s] - ap[r] for ap in aps[0]], [ap[s] - ap[r] for ap in aps[1]])
                for r, s in zip(stages, stages[1:])) + ' |')
        checkpoints = [entry['checkpoint'] for entry in pairs[0][0]['checkpoints']]
        losses = sorted({key.split('.', 1)[1] for key in
                         pairs[0][0]['checkpoints'][-1]['stage_losses']})
        for checkpoint in checkpoints:
            entries = [[next((e for e in d['checkpoints'] if e['checkpoint'] == checkpoint),
                             None) for d in pair] for pair in pairs]
            if any(e is None for pair in entries for e in pair):
                continue
            for loss in losses:
                rows.append(f'| {loss}, {checkpoint} | ' + ' | '.join(cell(
                    [pair[0]['stage_losses'][f'{s}.{loss}'] for pair in entries],
                    [pair[1]['stage_losses'][f'{s}.{loss}'] for pair in entries])
                    for s in stages) + ' |')
        out += [f'{name} - {names[0]}, paired by seed ({len(pairs)} seeds): mean difference '
                'and its 95% Student-t interval; losses on one fixed training batch:', '',
                '| what | ' + ' | '.join(stages) + ' |', '|---|' + '---|' * len(stages),
                *rows, '']
    return '\n'.join(out)


def run_name(run_dir: str) -> str:
    """A run's name: the folder above its seed folder, as run_experiments.py names it
    (``work_dirs/lr/lors-dino_1e-3/seed0`` -> ``'lors-dino 1e-3'``)."""
    return osp.basename(osp.dirname(osp.abspath(run_dir))).replace('_', ' ')


def by_run_name(run_dirs: List[str], read: Callable[[str], Any]) -> Dict[str, List[Any]]:
    """``{run name: [read(run dir) of each seed]}``, names in the order first given.

    Args:
        run_dirs: seed folders of one or more runs (:func:`run_name`).
        read: what to read from each run dir.
    """
    grouped: Dict[str, List[Any]] = {}
    for run_dir in run_dirs:
        grouped.setdefault(run_name(run_dir), []).append(read(run_dir))
    return grouped


def format_layer_ap(by_name: Dict[str, List[Dict[str, float]]]) -> str:
    """Markdown table of :func:`run_layer_ap` results: each decoder layer's AP, mean ±
    std over the seeds of each run name, and the last layer minus the one before,
    paired by seed with its 95% interval (none for one seed; '-' for a decoder of one
    layer).

    Args:
        by_name: ``{run name: [{'d0': AP, ...} of each seed]}``.
    """
    layers = max((list(runs[0]) for runs in by_name.values()), key=len)
    out = ['| run | seeds | ' + ' | '.join(layers) + ' | last - the one before, 95% CI |',
           '|---|---|' + '---|' * (len(layers) + 1)]
    for name, runs in by_name.items():
        keys = list(runs[0])
        if any(list(r) != keys for r in runs):
            raise ValueError(f"{name}: the seeds' decoders differ in depth: "
                             f'{sorted({len(r) for r in runs})} layers')
        if len(keys) < 2:
            change = '-'
        else:
            diff = paired_difference([r[keys[-1]] for r in runs], [r[keys[-2]] for r in runs])
            change = f'{diff["mean"]:+.3f}' + (
                f' [{diff["low"]:+.3f}, {diff["high"]:+.3f}]' if diff['n'] > 1 else '')
        out.append(f'| {name} | {len(runs)} | '
                   + ' | '.join(mean_std([r[k] for r in runs]) if k in keys else '-'
                                for k in layers) + f' | {change} |')
    return '\n'.join(out) + '\n'


def format_logged_losses(by_name: Dict[str, List[Dict[str, float]]]) -> str:
    """Markdown table of :func:`logged_losses` results, mean over the seeds of each run
    name ('-' where a seed did not log that loss).

    Args:
        by_name: ``{run name: [{loss name: value} of each seed]}``.
    """
    keys = sorted({k for runs in by_name.values() for r in runs for k in r}, key=_stage_order)
    out = ['| run | seeds | ' + ' | '.join(keys) + ' |', '|---|---|' + '---|' * len(keys)]
    for name, runs in by_name.items():
        out.append(f'| {name} | {len(runs)} | ' + ' | '.join(
            f'{sum(r[k] for r in runs) / len(runs):.3f}' if all(k in r for r in runs)
            else '-' for k in keys) + ' |')
    return '\n'.join(out) + '\n'


def format_layer_updates(compared: Dict[str, Dict[str, Dict[str, Dict[str, List[float]]]]]
                         ) -> str:
    """Markdown table of :func:`compared_layer_updates`: per run, checkpoint pair and
    layer container, each layer's ``moved`` and ``own``.

    Args:
        compared: ``{run dir: {checkpoint pair: {container: {'moved', 'own'}}}}``.
    """
    out = ['| run | checkpoints | layers | moved: norm(D_i) / norm(W_i) | '
           'own: norm(D_i - mean D) / norm(D_i) |', '|---|---|---|---|---|']
    for run_dir, pairs in compared.items():
        for pair, containers in pairs.items():
            for container, values in containers.items():
                out.append(f'| {run_dir} | {pair} | {container} | ' + ' | '.join(
                    ', '.join(f'{v:.3f}' for v in values[kind]) for kind in ('moved', 'own'))
                    + ' |')
    return '\n'.join(out) + '\n'


def format_residual_sizes(by_run: Dict[str, Dict[str, Dict[str, List[float]]]]) -> str:
    """Markdown table of :func:`run_residual_sizes` of several runs.

    Args:
        by_run: ``{run dir: {checkpoint: {stack: [per-layer |B A| / |W_shared|]}}}``.
    """
    out = ['| run | checkpoint | stack | norm(B A) / norm(W_shared), per layer |',
           '|---|---|---|---|']
    for run_dir, checkpoints in by_run.items():
        for checkpoint, stacks in checkpoints.items():
            for stack, sizes in stacks.items():
                out.append(f'| {run_dir} | {checkpoint} | {stack} | '
                           + ', '.join(f'{s:.3f}' for s in sizes) + ' |')
    return '\n'.join(out) + '\n'


def format_layer_gradients(by_name: Dict[str, List[Dict[str, Dict[str, List[float]]]]]
                           ) -> str:
    """Markdown table of :func:`run_layer_gradients`, per run name and layer container:
    each layer's ``share``, ``align`` and ``others``, mean (± std) over the seeds.

    Args:
        by_name: ``{run name: [{container: {'share', 'align', 'others'}} of each seed]}``.
    """
    kinds = ('share', 'align', 'others')
    out = ['| run | seeds | layers | share: norm(g_i) / sum norm(g_j) | '
           'align: cos(g_i, sum g_j) | others: cos(g_i, sum of the other g_j) |',
           '|---|---|---|---|---|---|']
    for name, runs in by_name.items():
        for container in runs[0]:
            cells = []
            for kind in kinds:
                per_layer = zip(*(r[container][kind] for r in runs))
                cells.append(', '.join(mean_std(list(v)) for v in per_layer))
            out.append(f'| {name} | {len(runs)} | {container} | ' + ' | '.join(cells) + ' |')
    return '\n'.join(out) + '\n'
