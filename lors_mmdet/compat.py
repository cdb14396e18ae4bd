"""Workarounds for the OpenMMLab stack on current PyTorch (filled in by the foundation work)."""
