"""LORS, the method: pure PyTorch, no OpenMMLab import."""
