"""Backbone variants of mmdet's backbones, registered in mmdet's MODELS."""
from .swin import SwinTransformerBranchDropPath

__all__ = ['SwinTransformerBranchDropPath']
