"""Merge a LORS-AdaMixer config + checkpoint into the equal plain AdaMixer
config + checkpoint, for deployment (the merge itself:
:mod:`lors_mmdet.models.adamixer.merge`)."""
import os.path as osp

from lors_mmdet.engine import AtomicLocalBackend, check_outputs
from lors_mmdet.models.adamixer.merge import (merge_lors_adamixer_state_dict,
                                              plain_adamixer_config)
from .steps import (build_model, load_config, load_strictly, read_checkpoint,
                    save_checkpoint)


def merge_lors_adamixer_checkpoint(config: str, checkpoint: str,
                                   out_config: str,
                                   out_checkpoint: str) -> dict:
    """Write the plain AdaMixer config + checkpoint equal to a LORS-AdaMixer
    config + checkpoint.

    The checkpoint is loaded with the safe loader (``weights_only=True``) and
    strictly into the model built from ``config``; the new checkpoint holds
    ``state_dict`` and ``meta`` (the source's plain-typed meta plus
    ``merged_from``: the source files and the merged decoder's sizes).

    Nothing is written unless every check passes: the outputs are new files
    (no input, not each other), ``out_config`` is a ``.py``, the checkpoint
    fits the config; then both are written atomically.

    Returns:
        ``meta['merged_from']``.

    Raises:
        ValueError: a check fails, named.
    """
    check_outputs(dict(config=config, checkpoint=checkpoint),
                  dict(config=out_config, checkpoint=out_checkpoint))
    if not str(out_config).endswith('.py'):
        raise ValueError(f'the output config {out_config} must be a .py file '
                         '(the plain AdaMixer config for tools/test.py)')
    cfg = load_config(config)
    plain_cfg = plain_adamixer_config(cfg)
    config_text = plain_cfg.pretty_text
    state_dict, meta = read_checkpoint(checkpoint)
    model = build_model(cfg.model)
    load_strictly(model, state_dict, f'checkpoint {checkpoint} (for config {config})')
    merged = merge_lors_adamixer_state_dict(model)
    roi_head = plain_cfg.model.roi_head
    merged_from = dict(
        config=osp.abspath(config),
        checkpoint=osp.abspath(checkpoint),
        n_groups=int(roi_head.n_groups),
        in_points=int(roi_head.in_points),
        out_points=int(roi_head.out_points),
        num_stages=int(model.roi_head.num_stages))
    meta = {k: v for k, v in meta.items()
            if isinstance(v, (str, int, float, bool))}
    meta['merged_from'] = merged_from
    save_checkpoint(merged, meta, out_checkpoint)
    AtomicLocalBackend().put_text(config_text, out_config)
    return merged_from
