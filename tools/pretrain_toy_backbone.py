"""Pretrain the toy backbone: classify the shapes of the synthetic data set.

The COCO configs start from an ImageNet-pretrained ResNet; nothing pretrained can be
downloaded here, so the toy configs would learn their backbone from scratch, inside
the detector. This is the toy's stand-in for ImageNet pretraining: the tiny ResNet-18
of the toy configs (16 base channels) learns to name the shape at the centre of a
window, at the image's own scale. The windows come from the training split and from
``--extra-images`` images that the data set's own generator draws afresh, from a random
stream that neither split uses (ImageNet, too, is a larger corpus than COCO and holds no
COCO image); the training split alone (3.5k shapes) is learned by heart long before the
backbone generalises. It writes a backbone checkpoint that a config loads with

    backbone=dict(init_cfg=dict(type='Pretrained', checkpoint=CHECKPOINT))

    python tools/pretrain_toy_backbone.py          # -> checkpoints/toy/resnet18-tiny_shapes.pth
    python tools/pretrain_toy_backbone.py --iters 200 --extra-images 0 --out /tmp/b.pth

The repository ships the default output (the toy configs load it), so nobody has to
wait for it; this command regenerates it. The run is deterministic for a given data
set and thread count (``--threads``, recorded in the checkpoint's meta): the same
command on the same machine writes the same tensors.

The validation split is never trained on; the printed accuracy is measured on its shapes.
"""
import argparse
import functools
import json
import math
import os
import os.path as osp
import time
from typing import Dict, List, Tuple

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from lors_mmdet.progress import progress_bar

EXTRA_IMAGES = 10000
DEFAULT_OUT = 'checkpoints/toy/resnet18-tiny_shapes.pth'
ROOT = osp.dirname(osp.dirname(osp.abspath(__file__)))
TOY_MODEL = osp.join(ROOT, 'configs/_base_/models/detr-4scale_r18-tiny_toy.py')


@functools.lru_cache(maxsize=1)  # read once, not per split / per use
def toy_model_cfg() -> Tuple[dict, np.ndarray, np.ndarray]:
    """The toy configs' backbone (last stage only, no init) and their RGB mean and std."""
    from lors_mmdet.engine.config_files import load_config
    model = load_config(TOY_MODEL).model
    backbone = dict(model.backbone.to_dict(), out_indices=(3, ), init_cfg=None)
    preprocessor = model.data_preprocessor
    return (backbone, np.array(preprocessor.mean, dtype=np.float32),
            np.array(preprocessor.std, dtype=np.float32))


def normalise(rgb: np.ndarray) -> np.ndarray:
    """An RGB image as the toy configs' data preprocessor feeds it to the backbone."""
    _, mean, std = toy_model_cfg()
    return (np.asarray(rgb, dtype=np.float32) - mean) / std


def centre_row(image_index: int, bbox: List[float], label: int) -> tuple:
    """The (image index, centre x, centre y, label) row of an ``[x, y, w, h]`` box."""
    x, y, w, h = bbox
    return image_index, x + w / 2, y + h / 2, label


def annotation_file(data_root: str, split: str) -> str:
    """The COCO annotation file of a split."""
    return osp.join(data_root, 'annotations', f'instances_{split}.json')


def load_split(data_root: str, split: str) -> Tuple[List[np.ndarray], np.ndarray]:
    """Normalised RGB images of a split and one (image index, cx, cy, label) row per box."""
    from PIL import Image
    ann_file = annotation_file(data_root, split)
    if not osp.isfile(ann_file):
        raise FileNotFoundError(
            f'{ann_file} not found: generate the data set first '
            '(python tools/generate_synthetic_coco.py) or pass --data-root')
    with open(ann_file) as f:
        coco = json.load(f)
    label_of = {c['id']: i for i, c in enumerate(sorted(coco['categories'],
                                                        key=lambda c: c['id']))}
    index_of = {}
    images = []
    for info in coco['images']:
        index_of[info['id']] = len(images)
        images.append(normalise(Image.open(osp.join(data_root, split, info['file_name']))
                                .convert('RGB')))
    rows = [centre_row(index_of[a['image_id']], a['bbox'], label_of[a['category_id']])
            for a in coco['annotations']]
    return images, np.array(rows, dtype=np.float32).reshape(-1, 4)


def render_extra_images(data_root: str, num_images: int,
                        first_index: int) -> Tuple[List[np.ndarray], np.ndarray]:
    """``num_images`` new images drawn with the generator settings recorded in the
    training split's annotation file, from the random stream of a third split that
    the data set never writes. Rows as :func:`load_split`'s, their image indices
    starting at ``first_index``."""
    from lors_mmdet.datasets.synthetic import SPLITS, render_stream_image
    ann_file = osp.join(data_root, 'annotations', 'instances_train.json')
    with open(ann_file) as f:
        generator = json.load(f).get('info', {}).get('generator')
    if generator is None:
        raise ValueError(
            f'{ann_file} records no generator settings (info.generator): --extra-images '
            'needs a data set made by tools/generate_synthetic_coco.py; pass '
            '--extra-images 0 to train on the training split only')
    images, rows = [], []
    progress = progress_bar(num_images, 'drawing extra images', unit='img')
    for image_id in range(1, num_images + 1):
        rgb, objects = render_stream_image(generator, len(SPLITS), image_id)
        rows += [centre_row(first_index + len(images), o['bbox'], o['label'])
                 for o in objects]
        images.append(normalise(rgb))
        progress.update(1)
    progress.close()
    return images, np.array(rows, dtype=np.float32).reshape(-1, 4)


def cut_windows(images: List[np.ndarray], rows: np.ndarray, window: int,
                rng: np.random.Generator, jitter: int,
                flip: bool = True) -> Tuple[torch.Tensor, torch.Tensor]:
    """Square windows (N, 3, window, window) centred on the boxes, shifted by up to
    ``jitter`` pixels and (``flip``) mirrored at random; outside the image is the mean
    colour (0). Returns the windows and the labels."""
    half = window // 2
    batch = np.zeros((len(rows), window, window, 3), dtype=np.float32)
    for k, (index, cx, cy, _) in enumerate(rows):
        image = images[int(index)]
        height, width = image.shape[:2]
        x0 = int(round(cx)) - half + int(rng.integers(-jitter, jitter + 1))
        y0 = int(round(cy)) - half + int(rng.integers(-jitter, jitter + 1))
        xa, ya = max(x0, 0), max(y0, 0)
        xb, yb = min(x0 + window, width), min(y0 + window, height)
        batch[k, ya - y0:yb - y0, xa - x0:xb - x0] = image[ya:yb, xa:xb]
        if flip and rng.random() < 0.5:
            batch[k] = batch[k, :, ::-1]
    return (torch.from_numpy(batch).permute(0, 3, 1, 2).contiguous(),
            torch.from_numpy(rows[:, 3].astype(np.int64)))


class ShapeClassifier(nn.Module):
    """The toy backbone, global average pooling and one linear layer."""

    def __init__(self, num_classes: int) -> None:
        super().__init__()
        from mmdet.registry import MODELS
        backbone_cfg = toy_model_cfg()[0]
        self.backbone = MODELS.build(backbone_cfg)
        self.backbone.init_weights()
        channels = backbone_cfg['base_channels'] * 8  # ResNet doubles 3 times
        self.head = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feature = self.backbone(x)[-1]
        return self.head(feature.mean(dim=(2, 3)))


@torch.no_grad()
def accuracy(model: ShapeClassifier, images: List[np.ndarray], rows: np.ndarray,
             window: int, batch_size: int = 256) -> float:
    model.eval()
    rng = np.random.default_rng(0)
    correct = 0
    for start in range(0, len(rows), batch_size):
        x, y = cut_windows(images, rows[start:start + batch_size], window, rng, jitter=0,
                           flip=False)
        correct += int((model(x).argmax(1) == y).sum())
    model.train()
    return correct / max(len(rows), 1)


def pretrain(data_root: str, out: str, iters: int, batch_size: int, lr: float,
             window: int, jitter: int, seed: int, extra_images: int) -> Dict[str, float]:
    """Train the shape classifier and save its backbone's weights to ``out``
    (with the torch thread count it ran with: the weights depend on it)."""
    import mmdet.models  # noqa: F401  (registers ResNet)

    from lors_mmdet.engine import check_outputs
    check_outputs({f'{split} annotations': annotation_file(data_root, split)
                   for split in ('train', 'val')}, dict(checkpoint=out))
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    train_images, train_rows = load_split(data_root, 'train')
    val_images, val_rows = load_split(data_root, 'val')
    if extra_images:
        images, rows = render_extra_images(data_root, extra_images, len(train_images))
        train_images += images
        train_rows = np.concatenate([train_rows, rows])
        print(f'{len(train_rows)} training shapes in {len(train_images)} images', flush=True)
    num_classes = int(train_rows[:, 3].max()) + 1
    model = ShapeClassifier(num_classes)
    optimizer = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    schedule = torch.optim.lr_scheduler.OneCycleLR(optimizer, max_lr=lr, total_steps=iters,
                                                   pct_start=0.05)
    start = time.time()
    progress = progress_bar(iters, 'pretraining the toy backbone', unit='iter')
    for step in range(1, iters + 1):
        picked = train_rows[rng.integers(len(train_rows), size=batch_size)]
        x, y = cut_windows(train_images, picked, window, rng, jitter)
        loss = F.cross_entropy(model(x), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        schedule.step()
        progress.set_postfix(loss=loss.item())
        progress.update(1)
    progress.close()
    result = dict(val_accuracy=accuracy(model, val_images, val_rows, window),
                  seconds=time.time() - start)
    from lors_mmdet.engine import save_checkpoint_file
    save_checkpoint_file(dict(state_dict=model.backbone.state_dict(),
                              meta=dict(backbone=toy_model_cfg()[0], iters=iters, seed=seed,
                                        batch_size=batch_size, lr=lr, window=window,
                                        jitter=jitter, extra_images=extra_images,
                                        threads=torch.get_num_threads(), **result)),
                         out)
    return result


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument('--data-root', default='data/synthetic_coco')
    parser.add_argument('--out', default=DEFAULT_OUT, help='backbone checkpoint to write')
    parser.add_argument('--iters', type=int, default=6000)
    parser.add_argument('--batch-size', type=int, default=64)
    parser.add_argument('--lr', type=float, default=3e-3)
    parser.add_argument('--window', type=int, default=64,
                        help='side of the windows cut around the shapes (pixels)')
    parser.add_argument('--jitter', type=int, default=8,
                        help='largest shift of a window from the shape centre (pixels)')
    parser.add_argument('--extra-images', type=int, default=EXTRA_IMAGES,
                        help='images drawn afresh by the generator and trained on besides '
                        'the training split (0: the training split only)')
    parser.add_argument('--seed', type=int, default=0)
    parser.add_argument('--threads', type=int, default=2,
                        help='torch threads (the result depends on it; 2 wrote the shipped '
                        'file)')
    args = parser.parse_args(argv)
    for key in ('iters', 'batch_size', 'window', 'threads'):
        if getattr(args, key) < 1:
            parser.error(f'--{key.replace("_", "-")} must be at least 1')
    if not (math.isfinite(args.lr) and args.lr > 0):
        parser.error(f'--lr must be a finite number > 0, got {args.lr}')
    if args.extra_images < 0:
        parser.error('--extra-images must be at least 0')
    if not 0 <= args.jitter < args.window // 2:
        parser.error('--jitter must be in [0, window / 2)')
    return args


def main(argv=None) -> None:
    args = parse_args(argv)
    previous_threads = torch.get_num_threads()
    torch.set_num_threads(args.threads)  # the float sums, hence the weights, depend on it
    try:
        result = pretrain(args.data_root, args.out, args.iters, args.batch_size, args.lr,
                          args.window, args.jitter, args.seed, args.extra_images)
    finally:  # leave a caller's (e.g. a test process's) setting as it was
        torch.set_num_threads(previous_threads)
    print(f'shape accuracy on the val split: {result["val_accuracy"]:.3f}')
    print(f'wrote {args.out} ({result["seconds"]:.0f} s)')


if __name__ == '__main__':
    main()
