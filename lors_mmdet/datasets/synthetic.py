"""A deterministic synthetic COCO-format detection data set of coloured shapes.

The project has no internet access and so no COCO: this module draws a small
detection data set instead, written in COCO format so that mmdet's
``CocoDataset`` and ``CocoMetric`` (pycocotools) use it unchanged::

    <out_dir>/train/000001.png ...
    <out_dir>/val/000001.png ...
    <out_dir>/annotations/instances_train.json
    <out_dir>/annotations/instances_val.json

Each image holds ``min_objects``..``max_objects`` shapes of :data:`CLASSES`
with varied size (log-uniform), colour, aspect ratio and rotation, drawn over
a textured, noisy background with thin distractor lines. Shapes may overlap.

Annotation policy:

- A shape is drawn with hard (aliased) edges, pixel by pixel, so "its pixels"
  is exact. Its ``bbox`` is the tight box ``[x, y, w, h]`` of the pixels of
  the shape that stay *visible* in the final image (pixel ``(i, j)`` covers
  ``[i, i + 1) x [j, j + 1)``), and ``area`` is the number of those pixels.
- Occlusion is limited while the image is composed: a new shape is only
  placed where it leaves every shape beneath it at least
  ``min_visible_fraction`` of its own pixels visible (the new shape is on top
  and stays whole). A shape that finds no such place is not drawn. So no
  drawn shape is left unannotated, and no annotation describes an almost
  hidden shape.
- Every shape lies fully inside its image with a margin of at least one
  pixel, so every box is strictly inside its image.
- Ids (images, annotations, categories) start at 1: pycocotools' COCOeval
  treats an annotation id of 0 as "unmatched".

Determinism: image ``k`` of a split is drawn from its own random generator
seeded by ``(seed, split, k)``, so the same seed gives byte-identical PNG files
and JSON, and changing ``num_train`` leaves the validation split unchanged.
(The byte identity holds for a fixed numpy/Pillow installation; numpy does not
promise identical random streams across its versions.)

This module needs numpy and Pillow only: it imports nothing from OpenMMLab.
"""
import json
import os
import os.path as osp
import shutil
from typing import Dict, List, Optional, Sequence, Tuple, Union

import numpy as np
from PIL import Image, ImageDraw

#: Category names, in category-id order (id = index + 1). The dataset config
#: ``configs/_base_/datasets/synthetic_coco_detection.py`` repeats this tuple
#: (mmengine configs cannot import it); a test keeps the two equal.
CLASSES: Tuple[str, ...] = ('circle', 'rectangle', 'triangle', 'star', 'cross',
                            'ring')

#: Bumped whenever the drawing changes; each data set records what drew it.
GENERATOR_VERSION = '1.0'

#: Written into ``info.description``; marks a folder as one this module made
#: (it may then overwrite it).
DATASET_DESCRIPTION = 'lors_mmdet synthetic shapes (COCO format)'

SPLITS = ('train', 'val')

_MARGIN = 1  # pixels kept free between any shape and the image border


def annotation_path(out_dir: str, split: str) -> str:
    """Path of the COCO annotation file of ``split`` ('train' or 'val')."""
    return osp.join(out_dir, 'annotations', f'instances_{split}.json')


# ----------------------------------------------------------------------------
# Drawing one image
# ----------------------------------------------------------------------------


def _points_in_polygon(x: np.ndarray, y: np.ndarray,
                       vertices: np.ndarray) -> np.ndarray:
    """Even-odd rule: which points ``(x, y)`` lie inside the closed polygon."""
    inside = np.zeros(x.shape, dtype=bool)
    x_a, y_a = vertices[:, 0], vertices[:, 1]
    x_b, y_b = np.roll(x_a, -1), np.roll(y_a, -1)
    for xa, ya, xb, yb in zip(x_a, y_a, x_b, y_b):
        straddles = (ya > y) != (yb > y)
        with np.errstate(divide='ignore', invalid='ignore'):
            x_cross = xa + (y - ya) * (xb - xa) / (yb - ya)
        inside ^= straddles & (x < x_cross)
    return inside


def _star_vertices(inner_ratio: float, points: int = 5) -> np.ndarray:
    angles = np.arange(2 * points) * np.pi / points - np.pi / 2
    radii = np.where(np.arange(2 * points) % 2 == 0, 1.0, inner_ratio)
    return np.stack([radii * np.cos(angles), radii * np.sin(angles)], axis=1)


def _cross_vertices(arm: float) -> np.ndarray:
    t = arm
    return np.array([(-t, -1), (t, -1), (t, -t), (1, -t), (1, t), (t, t),
                     (t, 1), (-t, 1), (-t, t), (-1, t), (-1, -t), (-t, -t)],
                    dtype=np.float64)


_TRIANGLE = np.array([(0.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])
_SQUARE = np.array([(-1.0, -1.0), (1.0, -1.0), (1.0, 1.0), (-1.0, 1.0)])


class _Shape:
    """One shape instance: class, geometry and colour.

    The shape is defined in local coordinates ``(u, v)`` in ``[-1, 1]^2``,
    stretched to half-extents ``(half_w, half_h)``, rotated by ``angle`` and
    centred at ``(cx, cy)`` (pixel units, pixel centres at ``i + 0.5``).
    """

    def __init__(self, label: int, half_w: float, half_h: float, angle: float,
                 shape_param: float) -> None:
        self.label = label
        self.half_w = half_w
        self.half_h = half_h
        self.angle = angle
        self.shape_param = shape_param  # star/ring inner radius, cross arm
        self.cx = 0.0
        self.cy = 0.0
        self.colour = np.zeros(3)

    def half_extent(self) -> Tuple[float, float]:
        """Half-width and half-height of the rotated shape's bounding box."""
        c, s = abs(np.cos(self.angle)), abs(np.sin(self.angle))
        return (self.half_w * c + self.half_h * s,
                self.half_w * s + self.half_h * c)

    def mask(self, height: int, width: int) -> np.ndarray:
        """Boolean mask of the pixels whose centres lie inside the shape."""
        ex, ey = self.half_extent()
        x0 = max(int(np.floor(self.cx - ex)) - 1, 0)
        x1 = min(int(np.ceil(self.cx + ex)) + 1, width)
        y0 = max(int(np.floor(self.cy - ey)) - 1, 0)
        y1 = min(int(np.ceil(self.cy + ey)) + 1, height)
        ys, xs = np.mgrid[y0:y1, x0:x1]
        dx = xs + 0.5 - self.cx
        dy = ys + 0.5 - self.cy
        c, s = np.cos(self.angle), np.sin(self.angle)
        u = (dx * c + dy * s) / self.half_w
        v = (-dx * s + dy * c) / self.half_h
        name = CLASSES[self.label]
        if name == 'circle':
            inside = u * u + v * v <= 1.0
        elif name == 'ring':
            r2 = u * u + v * v
            inside = (r2 <= 1.0) & (r2 >= self.shape_param**2)
        elif name == 'rectangle':
            inside = _points_in_polygon(u, v, _SQUARE)
        elif name == 'triangle':
            inside = _points_in_polygon(u, v, _TRIANGLE)
        elif name == 'star':
            inside = _points_in_polygon(u, v, _star_vertices(self.shape_param))
        elif name == 'cross':
            inside = _points_in_polygon(u, v,
                                        _cross_vertices(self.shape_param))
        else:  # pragma: no cover - CLASSES and this switch go together
            raise AssertionError(name)
        full = np.zeros((height, width), dtype=bool)
        full[y0:y1, x0:x1] = inside
        return full


def _sample_shape(rng: np.random.Generator, img_size: int,
                  size_range: Tuple[float, float]) -> _Shape:
    """Draw class, size, aspect ratio, rotation and shape details."""
    label = int(rng.integers(len(CLASSES)))
    name = CLASSES[label]
    lo, hi = size_range
    size = img_size * np.exp(rng.uniform(np.log(lo), np.log(hi)))
    if name in ('circle', 'ring'):
        aspect = 1.0  # a stretched circle would be a different class
        angle = 0.0
    else:
        aspect = float(np.exp(rng.uniform(np.log(0.6), np.log(1.67))))
        if name == 'rectangle':
            angle = float(rng.uniform(-np.pi / 6, np.pi / 6))
        else:
            angle = float(rng.uniform(-np.pi, np.pi))
    half_w = size * np.sqrt(aspect) / 2
    half_h = size / np.sqrt(aspect) / 2
    if name == 'star':
        shape_param = float(rng.uniform(0.4, 0.55))
    elif name == 'ring':
        shape_param = float(rng.uniform(0.45, 0.7))
    elif name == 'cross':
        shape_param = float(rng.uniform(0.25, 0.4))
    else:
        shape_param = 0.0
    return _Shape(label, half_w, half_h, angle, shape_param)


def _place(rng: np.random.Generator, shape: _Shape, img_size: int) -> bool:
    """Pick a centre keeping the shape inside the image; False if too large."""
    ex, ey = shape.half_extent()
    room_x = img_size - 2 * (_MARGIN + 1) - 2 * ex
    room_y = img_size - 2 * (_MARGIN + 1) - 2 * ey
    if room_x < 0 or room_y < 0:
        return False
    shape.cx = _MARGIN + 1 + ex + rng.uniform(0, room_x)
    shape.cy = _MARGIN + 1 + ey + rng.uniform(0, room_y)
    return True


def _interpolation_matrix(img_size: int, cells: int) -> np.ndarray:
    """Matrix ``M`` with ``M @ g`` the bilinear upsampling of ``cells + 1``
    grid values ``g`` to ``img_size`` pixel centres."""
    pos = (np.arange(img_size) + 0.5) / img_size * cells
    left = np.minimum(np.floor(pos).astype(int), cells - 1)
    frac = pos - left
    matrix = np.zeros((img_size, cells + 1))
    matrix[np.arange(img_size), left] = 1 - frac
    matrix[np.arange(img_size), left + 1] = frac
    return matrix


def _smooth_noise(rng: np.random.Generator, img_size: int, cells: int,
                  channels: int) -> np.ndarray:
    """Low-frequency noise in [-1, 1] of shape ``(img_size, img_size,
    channels)``: a random grid per channel, bilinearly upsampled."""
    grid = rng.uniform(-1, 1, size=(channels, cells + 1, cells + 1))
    matrix = _interpolation_matrix(img_size, cells)
    return (matrix @ grid @ matrix.T).transpose(1, 2, 0)


def _background(rng: np.random.Generator, img_size: int,
                texture: bool) -> np.ndarray:
    """A two-colour gradient, plus smooth colour blotches when textured."""
    c0 = rng.uniform(30, 225, size=3)
    c1 = np.clip(c0 + rng.uniform(-60, 60, size=3), 0, 255)
    if not texture:
        return np.broadcast_to(c0, (img_size, img_size, 3)).copy()
    theta = rng.uniform(0, 2 * np.pi)
    coords = np.arange(img_size) / max(img_size - 1, 1)
    t = np.cos(theta) * coords[None, :] + np.sin(theta) * coords[:, None]
    t = (t - t.min()) / max(t.max() - t.min(), 1e-6)
    img = c0 + (c1 - c0) * t[..., None]
    return img + 25 * _smooth_noise(rng, img_size, 4, 3)


def _distractor_lines(rng: np.random.Generator, img: np.ndarray) -> np.ndarray:
    """Draw 0-4 thin random line segments (clutter, not annotated)."""
    num_lines = int(rng.integers(0, 5))
    if num_lines == 0:
        return img
    size = img.shape[0]
    canvas = Image.fromarray(np.clip(img, 0, 255).astype(np.uint8))
    draw = ImageDraw.Draw(canvas)
    for _ in range(num_lines):
        p = rng.uniform(0, size, size=4)
        colour = tuple(int(c) for c in rng.integers(0, 256, size=3))
        draw.line([(p[0], p[1]), (p[2], p[3])], fill=colour, width=1)
    return np.asarray(canvas, dtype=np.float64)


def _pick_colour(rng: np.random.Generator,
                 avoid: List[np.ndarray],
                 min_distance: float = 90.0,
                 tries: int = 30) -> np.ndarray:
    """A random colour far (RGB distance) from every colour in ``avoid``."""
    best, best_distance = None, -1.0
    for _ in range(tries):
        colour = rng.uniform(0, 255, size=3)
        distance = min((float(np.linalg.norm(colour - a)) for a in avoid),
                       default=1e9)
        if distance >= min_distance:
            return colour
        if distance > best_distance:
            best, best_distance = colour, distance
    return best


def tight_box(mask: np.ndarray) -> List[int]:
    """COCO box ``[x, y, w, h]`` of the pixels set in a non-empty ``mask``."""
    cols = np.flatnonzero(mask.any(axis=0))
    rows = np.flatnonzero(mask.any(axis=1))
    if cols.size == 0:
        raise ValueError('tight_box: the mask is empty')
    x0, x1 = int(cols[0]), int(cols[-1]) + 1
    y0, y1 = int(rows[0]), int(rows[-1]) + 1
    return [x0, y0, x1 - x0, y1 - y0]


def render_image(rng: np.random.Generator,
                 img_size: int = 128,
                 min_objects: int = 1,
                 max_objects: int = 6,
                 size_range: Tuple[float, float] = (0.1, 0.4),
                 min_visible_fraction: float = 0.6,
                 texture: bool = True) -> Tuple[np.ndarray, List[dict]]:
    """Draw one image and return it with its objects.

    Args:
        rng: The random generator to draw from (the only source of randomness).
        img_size: Side of the square image in pixels.
        min_objects: Fewest shapes to try to place.
        max_objects: Most shapes to try to place.
        size_range: Range of a shape's size ``sqrt(w * h)`` (before rotation)
            as fractions of ``img_size``; sampled log-uniformly.
        min_visible_fraction: Each shape keeps at least this fraction of its
            pixels visible once every shape above it is drawn.
        texture: False draws flat colours with no gradient, noise or lines
            (used by tests to check the annotations against the pixels).

    Returns:
        tuple: ``(image, objects)``: ``image`` an ``(img_size, img_size, 3)``
        RGB uint8 array; ``objects`` in drawing order (bottom first), each a
        dict with ``label`` (index into :data:`CLASSES`), ``bbox``
        (``[x, y, w, h]`` of the visible pixels), ``area`` (visible pixel
        count), ``mask`` (visible pixels) and ``colour`` (RGB, before noise).
    """
    background = _background(rng, img_size, texture)
    if texture:
        background = _distractor_lines(rng, background)
    background_colour = background.reshape(-1, 3).mean(axis=0)
    num_objects = int(rng.integers(min_objects, max_objects + 1))

    shapes: List[_Shape] = []
    full_masks: List[np.ndarray] = []  # each shape's own pixels
    covered: List[np.ndarray] = []  # pixels of each shape hidden from above
    for _ in range(num_objects):
        for _attempt in range(20):
            shape = _sample_shape(rng, img_size, size_range)
            if not _place(rng, shape, img_size):
                continue
            mask = shape.mask(img_size, img_size)
            area = int(mask.sum())
            if area < 12:
                continue
            # Would the new shape hide too much of any shape beneath it?
            too_hidden = any(
                ((cov | mask)
                 & full).sum() > (1 - min_visible_fraction) * full.sum()
                for full, cov in zip(full_masks, covered))
            if too_hidden:
                continue
            overlapped = [
                s.colour for s, full in zip(shapes, full_masks)
                if (full & mask).any()
            ]
            shape.colour = _pick_colour(rng, [background_colour] + overlapped)
            covered = [cov | mask for cov in covered]
            shapes.append(shape)
            full_masks.append(mask)
            covered.append(np.zeros_like(mask))
            break

    image = background.copy()
    objects = []
    for shape, full, cov in zip(shapes, full_masks, covered):
        colour = shape.colour
        if texture:
            # A gentle linear shading across the shape, so it is not flat.
            direction = rng.uniform(-1, 1, size=2)
            ys, xs = np.nonzero(full)
            ramp = ((xs - shape.cx) * direction[0] +
                    (ys - shape.cy) * direction[1]) / max(
                        shape.half_w, shape.half_h)
            image[ys, xs] = colour + 20 * ramp[:, None]
        else:
            image[full] = colour
        visible = full & ~cov
        objects.append(
            dict(label=shape.label,
                 bbox=tight_box(visible),
                 area=int(visible.sum()),
                 mask=visible,
                 colour=colour))
    if texture:
        image = image + rng.normal(0, 6, size=image.shape)
    return np.clip(np.rint(image), 0, 255).astype(np.uint8), objects


# ----------------------------------------------------------------------------
# Writing a data set
# ----------------------------------------------------------------------------


def _check_int(name: str, value, minimum: int) -> None:
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise TypeError(f'{name} must be an int, got {value!r} '
                        f'({type(value).__name__})')
    if value < minimum:
        raise ValueError(f'{name} must be >= {minimum}, got {value}')


def _is_previous_output(out_dir: str) -> bool:
    for split in SPLITS:
        path = annotation_path(out_dir, split)
        if osp.isfile(path):
            try:
                with open(path) as f:
                    info = json.load(f).get('info', {})
            except (OSError, ValueError):
                return False
            return info.get('description') == DATASET_DESCRIPTION
    return False


def _prepare_out_dir(out_dir: str) -> None:
    """Create ``out_dir``; clear it if this module made it; refuse others."""
    if osp.exists(out_dir) and not osp.isdir(out_dir):
        raise ValueError(f'out_dir={out_dir!r} exists and is not a directory')
    if osp.isdir(out_dir) and os.listdir(out_dir):
        if not _is_previous_output(out_dir):
            raise ValueError(
                f'out_dir={out_dir!r} is not empty and does not hold a data '
                'set made by generate_synthetic_coco; refusing to overwrite '
                'it. Choose an empty or new directory.')
        for sub in (*SPLITS, 'annotations'):
            shutil.rmtree(osp.join(out_dir, sub), ignore_errors=True)
    for sub in (*SPLITS, 'annotations'):
        os.makedirs(osp.join(out_dir, sub), exist_ok=True)


def generate_synthetic_coco(out_dir: str,
                            num_train: int = 1000,
                            num_val: int = 100,
                            img_size: int = 128,
                            seed: int = 0,
                            max_objects: int = 6,
                            min_objects: int = 1,
                            size_range: Tuple[float, float] = (0.1, 0.4),
                            min_visible_fraction: float = 0.6,
                            show_progress: bool = False) -> Dict[str, str]:
    """Generate the synthetic COCO-format data set under ``out_dir``.

    A previous output of this function at ``out_dir`` is replaced; any other
    non-empty directory is refused.

    Args:
        out_dir: Root folder of the data set (created if needed).
        num_train: Number of training images.
        num_val: Number of validation images.
        img_size: Side of the square images in pixels (>= 32).
        seed: Seed (>= 0); the same seed gives byte-identical files.
        max_objects: Most shapes per image.
        min_objects: Fewest shapes per image (>= 1). A shape that finds no
            place within the occlusion limit is left out, so an image can
            hold fewer.
        size_range: ``(low, high)`` shape sizes as fractions of ``img_size``.
        min_visible_fraction: Least visible fraction of every shape, in
            ``(0, 1]``.
        show_progress: Show a progress bar (plain lines when standard error is
            not a terminal: see :func:`lors_mmdet.progress.progress_bar`).

    Returns:
        dict: ``{'train': ann_file, 'val': ann_file}`` (absolute paths).
    """
    if not isinstance(out_dir, (str, os.PathLike)):
        raise TypeError(f'out_dir must be a path, got {out_dir!r}')
    out_dir = osp.abspath(os.fspath(out_dir))
    _check_int('num_train', num_train, 1)
    _check_int('num_val', num_val, 1)
    _check_int('img_size', img_size, 32)
    _check_int('seed', seed, 0)
    _check_int('min_objects', min_objects, 1)
    _check_int('max_objects', max_objects, min_objects)
    if (len(size_range) != 2 or not 0 < size_range[0] <= size_range[1] <= 0.9):
        raise ValueError('size_range must be (low, high) with '
                         f'0 < low <= high <= 0.9, got {size_range!r}')
    if not 0 < min_visible_fraction <= 1:
        raise ValueError('min_visible_fraction must be in (0, 1], got '
                         f'{min_visible_fraction!r}')

    _prepare_out_dir(out_dir)
    params = dict(generator_version=GENERATOR_VERSION,
                  seed=int(seed),
                  img_size=int(img_size),
                  min_objects=int(min_objects),
                  max_objects=int(max_objects),
                  size_range=[float(size_range[0]),
                              float(size_range[1])],
                  min_visible_fraction=float(min_visible_fraction))
    counts = dict(train=num_train, val=num_val)
    progress = None
    if show_progress:
        from ..progress import progress_bar
        progress = progress_bar(num_train + num_val, 'synthetic COCO', unit='img')
    ann_files = {}
    try:
        for split_index, split in enumerate(SPLITS):
            ann_files[split] = _write_split(out_dir, split, split_index,
                                            counts[split], params, progress)
    finally:
        if progress is not None:
            progress.close()
    return ann_files


def render_stream_image(params: dict, stream: int,
                        image_id: int) -> Tuple[np.ndarray, List[dict]]:
    """Image ``image_id`` of random stream ``stream`` (split ``k`` of :data:`SPLITS`
    is stream ``k``), drawn with the generator settings ``params`` that the
    annotation files record under ``info.generator``. Returns
    :func:`render_image`'s ``(image, objects)``."""
    rng = np.random.default_rng([params['seed'], stream, image_id])
    return render_image(rng,
                        img_size=params['img_size'],
                        min_objects=params['min_objects'],
                        max_objects=params['max_objects'],
                        size_range=tuple(params['size_range']),
                        min_visible_fraction=params['min_visible_fraction'])


def _write_split(out_dir: str, split: str, split_index: int, num_images: int,
                 params: dict, progress) -> str:
    img_size = params['img_size']
    images, annotations = [], []
    for image_id in range(1, num_images + 1):
        image, objects = render_stream_image(params, split_index, image_id)
        file_name = f'{image_id:06d}.png'
        Image.fromarray(image).save(osp.join(out_dir, split, file_name),
                                    format='PNG',
                                    compress_level=1)
        images.append(
            dict(id=image_id,
                 file_name=file_name,
                 width=img_size,
                 height=img_size))
        for obj in objects:
            annotations.append(
                dict(id=len(annotations) + 1,
                     image_id=image_id,
                     category_id=obj['label'] + 1,
                     bbox=obj['bbox'],
                     area=obj['area'],
                     iscrowd=0))
        if progress is not None:
            progress.update(1)
    coco = dict(info=dict(description=DATASET_DESCRIPTION,
                          version=GENERATOR_VERSION,
                          split=split,
                          generator=params),
                licenses=[],
                images=images,
                annotations=annotations,
                categories=[
                    dict(id=i + 1, name=name, supercategory='shape')
                    for i, name in enumerate(CLASSES)
                ])
    path = annotation_path(out_dir, split)
    with open(path, 'w') as f:
        json.dump(coco, f, separators=(',', ':'))
        f.write('\n')
    return path


# ----------------------------------------------------------------------------
# Checking a data set
# ----------------------------------------------------------------------------

#: :func:`image_file_problem` of a path where no file is.
IMAGE_MISSING = 'does not exist'

_PNG_SIGNATURE = b'\x89PNG\r\n\x1a\n'
# The closing IEND chunk is searched in this many last bytes, so that a few
# bytes some writers append after it are tolerated.
_PNG_TAIL_BYTES = 64


def _positive_number(value) -> bool:
    return (isinstance(value, (int, float)) and not isinstance(value, bool)
            and 0 < value < float('inf'))


def is_coco_id(value) -> bool:
    """Whether ``value`` can be a COCO id (pycocotools keys its tables by them)."""
    return isinstance(value, (int, str)) and not isinstance(value, bool)


def read_coco_file(ann_file: str) -> dict:
    """Read a COCO detection annotation file, checking what every reader of it
    relies on.

    The checks: the file exists and is JSON; its top level is an object with
    the lists ``images``, ``annotations`` and ``categories`` of objects; every
    image has an ``id``, a string ``file_name`` and a positive ``width`` and
    ``height``; every category an ``id`` and a string ``name``;
    no two images share an ``id`` (pycocotools would keep one of them and give
    it the annotations of both). The annotations are left to the caller.

    Args:
        ann_file: Path of the ``instances_*.json`` file.

    Returns:
        dict: The parsed file.

    Raises:
        FileNotFoundError: No such file.
        ValueError: A check failed; the message names the file and the image.
    """
    if not osp.isfile(ann_file):
        raise FileNotFoundError(f'COCO annotation file not found: {ann_file}')
    with open(ann_file) as f:
        try:
            coco = json.load(f)
        except ValueError as error:  # JSONDecodeError, or bytes that are no text
            raise ValueError(f'{ann_file}: not valid JSON ({error})') from None
    if not isinstance(coco, dict):
        raise ValueError(f'{ann_file}: expected a JSON object with "images", '
                         '"annotations" and "categories" at the top, got a '
                         f'{type(coco).__name__}')
    for key in ('images', 'annotations', 'categories'):
        entries = coco.get(key)
        if not isinstance(entries, list):
            raise ValueError(f'{ann_file}: expected a list "{key}" in a COCO '
                             f'annotation file, got {type(entries).__name__}')
        for index, entry in enumerate(entries):
            if not isinstance(entry, dict):
                raise ValueError(f'{ann_file}: {key}[{index}] is a '
                                 f'{type(entry).__name__}; expected an object')
    file_names: Dict[object, List[str]] = {}
    for index, image in enumerate(coco['images']):
        if 'id' not in image:
            raise ValueError(f'{ann_file}: images[{index}] has no "id"; expected '
                             'a number that its annotations refer to')
        where = f'{ann_file}: image id {image["id"]!r}'
        if not isinstance(image.get('file_name'), str):
            raise ValueError(f'{where}: no "file_name"; expected the image '
                             'path relative to the image folder')
        for key in ('width', 'height'):
            if not _positive_number(image.get(key)):
                found = (f'"{key}" is {image[key]!r}' if key in image else f'no "{key}"')
                raise ValueError(f'{where} ({image["file_name"]}): {found}; '
                                 'expected a positive number')
        if not is_coco_id(image['id']):
            raise ValueError(f'{where} ({image["file_name"]}): expected a '
                             'number as id')
        file_names.setdefault(image['id'], []).append(image['file_name'])
    for index, category in enumerate(coco['categories']):
        if not is_coco_id(category.get('id')) or not isinstance(category.get('name'), str):
            raise ValueError(f'{ann_file}: categories[{index}] is {category!r}; '
                             'expected a number "id" and a string "name"')
    for image_id, names in file_names.items():
        if len(names) > 1:
            shown = ', '.join(names[:5]) + (', ...' if len(names) > 5 else '')
            raise ValueError(f'{ann_file}: image id {image_id!r} is used by '
                             f'{len(names)} images ({shown}); expected one '
                             'id per image')
    return coco


def image_file_problem(path: str) -> Optional[str]:
    """What keeps the image file at ``path`` from being read, or None.

    Cheap enough for every image of a large data set: a missing or empty file,
    and a PNG file (by its name) without the PNG signature at its start or the
    closing IEND chunk at its end (a copy cut short: OpenCV decodes it to
    nothing). Nothing else of the file is read; a JPEG is not checked (data
    after its end marker is common, so a cut one is not detectable this way).

    Args:
        path: The image file.
    """
    if not osp.isfile(path):
        return IMAGE_MISSING
    size = osp.getsize(path)
    if size == 0:
        return 'an empty file'
    if path.lower().endswith('.png'):
        with open(path, 'rb') as f:
            head = f.read(len(_PNG_SIGNATURE))
            f.seek(max(size - _PNG_TAIL_BYTES, 0))
            tail = f.read()
        if head != _PNG_SIGNATURE:
            return 'not a PNG file (no PNG signature at its start)'
        if b'IEND' not in tail:
            return 'a truncated PNG (no IEND chunk at its end)'
    return None



def validate_coco_annotations(
        ann_file: str,
        img_dir: Optional[str] = None,
        expected_classes: Optional[Sequence[str]] = None) -> Dict[str, int]:
    """Check a COCO detection annotation file; raise ValueError on problems.

    Checks the structure (:func:`read_coco_file`, which raises at once), that
    annotation and category ids are unique, that every
    annotation refers to an existing image and category, that every box is
    ``[x, y, w, h]`` with positive size and lies inside its image, that
    ``area`` is positive and ``iscrowd`` is 0 or 1. With ``img_dir``, also
    that every image file is whole (:func:`image_file_problem`) and has the
    recorded size; with
    ``expected_classes``, that the category names are exactly these, in
    category-id order.

    Args:
        ann_file: Path of the ``instances_*.json`` file.
        img_dir: Folder of the images (``file_name`` is relative to it).
        expected_classes: Category names expected, in id order.

    Returns:
        dict: Counts: ``images``, ``annotations``, and per category name.
    """
    coco = read_coco_file(ann_file)
    problems: List[str] = []

    def unique_ids(key: str) -> Dict[int, dict]:
        by_id: Dict[int, dict] = {}
        for item in coco[key]:
            if item.get('id') in by_id:
                problems.append(f'duplicate {key} id {item.get("id")}')
            by_id[item.get('id')] = item
        return by_id

    images = unique_ids('images')
    categories = unique_ids('categories')
    unique_ids('annotations')
    names = [
        c.get('name')
        for c in sorted(coco['categories'], key=lambda c: c['id'])
    ]
    if len(set(names)) != len(names):
        problems.append(f'duplicate category names in {names}')
    if expected_classes is not None and names != list(expected_classes):
        problems.append(f'categories {names} != expected '
                        f'{list(expected_classes)}')
    counts: Dict[str, int] = {name: 0 for name in names}
    for ann in coco['annotations']:
        where = f'annotation id {ann.get("id")}'
        image = images.get(ann.get('image_id'))
        category = categories.get(ann.get('category_id'))
        if image is None:
            problems.append(f'{where}: unknown image_id {ann.get("image_id")}')
        if category is None:
            problems.append(
                f'{where}: unknown category_id {ann.get("category_id")}')
        else:
            counts[category['name']] += 1
        bbox = ann.get('bbox')
        if (not isinstance(bbox, list) or len(bbox) != 4
                or not all(isinstance(v, (int, float)) for v in bbox)):
            problems.append(f'{where}: bbox {bbox!r} is not [x, y, w, h]')
            continue
        x, y, w, h = bbox
        if w <= 0 or h <= 0:
            problems.append(f'{where}: bbox {bbox} has no size')
        if image is not None and (x < 0 or y < 0 or x + w > image['width']
                                  or y + h > image['height']):
            problems.append(f'{where}: bbox {bbox} leaves its image of '
                            f'{image["width"]}x{image["height"]}')
        if not ann.get('area', 0) > 0:
            problems.append(f'{where}: area {ann.get("area")!r} <= 0')
        if ann.get('iscrowd') not in (0, 1):
            problems.append(f'{where}: iscrowd {ann.get("iscrowd")!r}')
    if img_dir is not None:
        for image in coco['images']:
            path = osp.join(img_dir, image['file_name'])
            problem = image_file_problem(path)
            if problem is not None:
                problems.append(f'image file missing: {path}' if problem == IMAGE_MISSING
                                else f'{path}: {problem}')
                continue
            with Image.open(path) as img:
                if img.size != (image['width'], image['height']):
                    problems.append(f'{path}: size {img.size} != recorded '
                                    f'{(image["width"], image["height"])}')
    if problems:
        shown = '\n  '.join(problems[:20])
        more = f'\n  ... and {len(problems) - 20} more' \
            if len(problems) > 20 else ''
        raise ValueError(f'{ann_file}: {len(problems)} problem(s):\n  '
                         f'{shown}{more}')
    return dict(images=len(coco['images']),
                annotations=len(coco['annotations']),
                **counts)


def validate_synthetic_coco(
        out_dir: Union[str, os.PathLike]) -> Dict[str, Dict[str, int]]:
    """Validate both splits of a data set made by
    :func:`generate_synthetic_coco`; returns the counts per split."""
    out_dir = os.fspath(out_dir)
    return {
        split:
        validate_coco_annotations(annotation_path(out_dir, split),
                                  img_dir=osp.join(out_dir, split),
                                  expected_classes=CLASSES)
        for split in SPLITS
    }
