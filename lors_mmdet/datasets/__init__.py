"""Data for the plugin: the embedded synthetic COCO-format data set.

Nothing here imports OpenMMLab: the generator works with numpy and Pillow only.
"""
from .synthetic import (CLASSES, annotation_path, generate_synthetic_coco,
                        image_file_problem, read_coco_file, render_image,
                        validate_coco_annotations, validate_synthetic_coco)

__all__ = [
    'CLASSES', 'annotation_path', 'generate_synthetic_coco', 'image_file_problem',
    'read_coco_file', 'render_image', 'validate_coco_annotations',
    'validate_synthetic_coco'
]
