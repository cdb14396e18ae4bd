"""Import a checkpoint of the authors' AdaMixer or LORS-AdaMixer release
(mmdet 2.12) into this plugin's layout (the key mapping itself:
:mod:`lors_mmdet.models.adamixer.checkpoint_converter`)."""
from typing import Optional, Tuple

from lors_mmdet.engine import check_outputs
from lors_mmdet.models.adamixer.checkpoint_converter import (
    convert_adamixer_checkpoint, settings_mismatches)
from .steps import load_config, read_checkpoint, save_checkpoint


def import_adamixer_release(src: str, dst: str,
                            config: Optional[str] = None) -> Tuple[dict, dict]:
    """Convert the authors' checkpoint ``src`` and save it to ``dst``.

    Args:
        src: The released checkpoint (a file or a URL; read safely).
        dst: Where the converted checkpoint goes (a new file, written
            atomically).
        config: A config the checkpoint is meant for: the decoder settings
            read from the tensors' shapes must equal its ``model.roi_head``.

    Returns:
        The converted checkpoint ``{'state_dict', 'meta'}`` and the report of
        :func:`~lors_mmdet.models.adamixer.checkpoint_converter.convert_adamixer_state_dict`.

    Raises:
        ValueError: ``dst`` is an input, the file is no AdaMixer checkpoint,
            or it does not fit ``config`` (the settings named); nothing is
            written.
    """
    check_outputs(dict(src=src, config=config), dict(dst=dst))
    state_dict, meta = read_checkpoint(src)
    converted, report = convert_adamixer_checkpoint(
        dict(state_dict=state_dict, meta=meta))
    if config:
        mismatches = settings_mismatches(report, load_config(config).model)
        if mismatches:
            raise ValueError(f'{src} does not fit {config}:\n  ' +
                             '\n  '.join(mismatches))
    save_checkpoint(converted['state_dict'], converted['meta'], dst)
    return converted, report
