"""A detection visualizer for small images: drawn larger, with labels that do not collide.

mmdet's ``DetLocalVisualizer`` draws on the image at its own size and puts each label
at the top-left corner of its box. On the 128 px images of the synthetic data set
that gives a 256 x 128 px picture (ground truth | detections) whose labels cover
each other. :class:`ReadableDetVisualizer` upscales the image first, draws boxes
and labels with OpenCV at a fixed, legible size, and places every label where no
other label is (:func:`place_labels`).
"""
from typing import List, Optional, Sequence, Tuple

import cv2
import numpy as np
from mmdet.registry import VISUALIZERS
from mmdet.visualization import DetLocalVisualizer
from mmdet.visualization.palette import get_palette
from mmengine.structures import InstanceData

#: A rectangle ``(x0, y0, x1, y1)`` in pixels, ``x1`` and ``y1`` exclusive.
Rect = Tuple[int, int, int, int]

_FONT = cv2.FONT_HERSHEY_SIMPLEX


def _overlaps(rect: Rect, others: Sequence[Rect]) -> bool:
    x0, y0, x1, y1 = rect
    return any(x0 < ox1 and ox0 < x1 and y0 < oy1 and oy0 < y1
               for ox0, oy0, ox1, oy1 in others)


def place_labels(boxes: np.ndarray, sizes: Sequence[Tuple[int, int]], width: int,
                 height: int, taken: Sequence[Rect] = ()) -> List[Optional[Rect]]:
    """Places one label per box so that no two labels overlap.

    Each label goes to the first free place among: just above its box's top-left
    corner, inside the box below that corner, just below the box, inside the box
    above its bottom edge; else to the free place nearest that first choice on a
    grid over the image. Labels are placed in the order of ``boxes``, so earlier
    boxes (e.g. higher scores) get the better places.

    Args:
        boxes: ``(n, 4)`` boxes ``x0, y0, x1, y1`` in the image's pixels.
        sizes: ``(w, h)`` of each label in pixels.
        width: Width of the image; labels stay inside it.
        height: Height of the image.
        taken: Rectangles that labels must not cover (e.g. a title).

    Returns:
        list: One rectangle per box, or None where the image has no free place
        left for a label of that size.
    """
    placed: List[Rect] = list(taken)
    result: List[Optional[Rect]] = []
    for (x0, y0, x1, y1), (w, h) in zip(np.asarray(boxes, dtype=float).tolist(), sizes):
        if w > width or h > height:
            result.append(None)
            continue

        def fit(x: float, y: float) -> Rect:
            left = int(min(max(round(x), 0), width - w))
            top = int(min(max(round(y), 0), height - h))
            return left, top, left + w, top + h

        candidates = [fit(x0, y0 - h), fit(x0, y0), fit(x0, y1), fit(x0, y1 - h)]
        spot = next((rect for rect in candidates if not _overlaps(rect, placed)), None)
        if spot is None:  # the search over the whole image, only when needed
            first, step = candidates[0], max(h // 2, 1)
            grid = [fit(x, y) for y in range(0, height - h + 1, step)
                    for x in range(0, width - w + 1, step)]
            grid.sort(key=lambda r: (r[0] - first[0]) ** 2 + (r[1] - first[1]) ** 2)
            spot = next((rect for rect in grid if not _overlaps(rect, placed)), None)
        if spot is not None:
            placed.append(spot)
        result.append(spot)
    return result


@VISUALIZERS.register_module()
class ReadableDetVisualizer(DetLocalVisualizer):
    """mmdet's detection visualizer, drawing an upscaled image with separate labels.

    Draws boxes and their labels (class name, and the score of a detection) of
    ``gt_instances`` and ``pred_instances``; masks and segmentation maps are not
    drawn. Each panel gets a title ("ground truth" / "detections") in its top-left
    corner. After each drawing, :attr:`label_rects` holds the label rectangles of
    its panels (the title first), for checking the layout.

    Args:
        name: The visualizer's instance name (mmengine keeps one per name).
        scale: Integer factor the image is enlarged by (nearest neighbour, so that
            each pixel stays visible as a square).
        font_scale: OpenCV font scale of the labels (0.5: text about 10 px high).
        **kwargs: ``DetLocalVisualizer``'s arguments (``line_width`` is the box
            line width in pixels of the enlarged image).
    """

    def __init__(self, name: str = 'visualizer', scale: int = 4, font_scale: float = 0.5,
                 **kwargs) -> None:
        kwargs.setdefault('line_width', 2)
        super().__init__(name=name, **kwargs)
        if isinstance(scale, bool) or not isinstance(scale, int) or scale < 1:
            raise ValueError(f'ReadableDetVisualizer: scale must be an int >= 1, '
                             f'got {scale!r}')
        self.scale = scale
        self.font_scale = font_scale
        self.label_rects: List[List[Optional[Rect]]] = []

    def add_datasample(self, name: str, image: np.ndarray, *args, **kwargs) -> None:
        """``DetLocalVisualizer.add_datasample`` on the image enlarged ``scale`` times.

        Args:
            name: The image's identifier.
            image: The RGB image at the size the boxes refer to.
            *args: ``DetLocalVisualizer.add_datasample``'s other arguments.
            **kwargs: Its keyword arguments.
        """
        self.label_rects = []
        image = np.asarray(image).clip(0, 255).astype(np.uint8)
        large = cv2.resize(image, None, fx=self.scale, fy=self.scale,
                           interpolation=cv2.INTER_NEAREST)
        super().add_datasample(name, large, *args, **kwargs)

    def _label(self, text: str) -> Tuple[Tuple[int, int], int]:
        """``(w, h)`` of a label with its padding, and the text's baseline offset."""
        (w, h), baseline = cv2.getTextSize(text, _FONT, self.font_scale, 1)
        return (w + 4, h + baseline + 4), h + 2

    def _draw_instances(self, image: np.ndarray, instances: InstanceData,
                        classes: Optional[Sequence[str]],
                        palette: Optional[Sequence[tuple]]) -> np.ndarray:
        """Draws the boxes of ``instances`` on the enlarged ``image`` and their labels.

        Args:
            image: The enlarged RGB image.
            instances: ``bboxes`` (in the original image's pixels), ``labels`` and,
                for detections, ``scores``.
            classes: Class names, or None for "class <i>".
            palette: Box colour per class (RGB), or None for mmdet's default.

        Returns:
            np.ndarray: The drawn RGB image.
        """
        canvas = np.ascontiguousarray(image).copy()
        height, width = canvas.shape[:2]
        title = 'detections' if 'scores' in instances else 'ground truth'
        title_size, title_base = self._label(title)
        title_rect = (0, 0) + title_size
        bboxes = instances.get('bboxes', np.zeros((0, 4)))
        bboxes = (bboxes.tensor if hasattr(bboxes, 'tensor') else bboxes)
        bboxes = np.asarray(bboxes.cpu() if hasattr(bboxes, 'cpu') else bboxes,
                            dtype=float).reshape(-1, 4) * self.scale
        labels = [int(label) for label in instances.get('labels', [])]
        scores = ([float(score) for score in instances.scores] if 'scores' in instances
                  else [None] * len(labels))
        colours = get_palette(palette if self.bbox_color is None else self.bbox_color,
                              max(labels, default=0) + 1)
        texts = [(classes[label] if classes is not None else f'class {label}')
                 + ('' if score is None else f' {score:.2f}')
                 for label, score in zip(labels, scores)]
        order = sorted(range(len(texts)), key=lambda i: -(scores[i] or 0.0))
        for i in order:
            x0, y0, x1, y1 = (int(round(v)) for v in bboxes[i])
            cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), colours[labels[i]],
                          self.line_width)
        measured = [self._label(texts[i]) for i in order]
        spots = place_labels(bboxes[order], [size for size, _ in measured], width, height,
                             taken=[title_rect])
        self._draw_label(canvas, title, title_rect, title_base, (255, 255, 255))
        rects: List[Optional[Rect]] = [title_rect] + [None] * len(texts)
        for i, spot, (_, base) in zip(order, spots, measured):
            if spot is not None:
                self._draw_label(canvas, texts[i], spot, base, colours[labels[i]])
            rects[1 + i] = spot
        self.label_rects.append(rects)
        return canvas

    def _draw_label(self, canvas: np.ndarray, text: str, rect: Rect, base: int,
                    colour: Sequence[int]) -> None:
        """Writes ``text`` in dark or light type on a box of ``colour`` at ``rect``."""
        x0, y0, x1, y1 = rect
        cv2.rectangle(canvas, (x0, y0), (x1 - 1, y1 - 1), tuple(int(c) for c in colour), -1)
        light = 0.299 * colour[0] + 0.587 * colour[1] + 0.114 * colour[2] > 140
        ink = (0, 0, 0) if light else (255, 255, 255)
        cv2.putText(canvas, text, (x0 + 2, y0 + base), _FONT, self.font_scale, ink, 1,
                    cv2.LINE_AA)
