"""``model.lors``: the LORS stacks of a detector, one key for every family.

A detector with :class:`LorsStacksMixin` takes::

    model = dict(
        ...,
        lors=dict(
            decoder=dict(rank=16, include=['ffn'], layer_groups=None),
            encoder=dict(rank=32)))      # the parts the detector has

Each part is a :class:`~lors_mmdet.lors.LorsStackConfig` dict (``rank``,
``num_terms``, ``ranks``, ``include``, ``exclude``, ``layer_groups``, ``init``),
validated by :func:`parse_lors_cfg` and applied by
:func:`~lors_mmdet.lors.apply_lors` to the stack the detector class names in
``lors_stack_paths`` (DETR family: ``encoder.layers`` / ``decoder.layers``;
AdaMixer: the decoder stages ``roi_head.bbox_head``). A part left out stays
stock.
"""
import copy
from typing import Any, Dict, List, Mapping, Optional, Sequence, Tuple

import torch
from torch import Tensor, nn

from lors_mmdet.engine.load_checks import check_lors_state_dict
from lors_mmdet.lors import (LorsStack, LorsStackConfig, apply_lors,
                             find_lors_stacks, init_as_stock, merge_lors)

LORS_PARTS = ('encoder', 'decoder')
LORS_KEY = 'model.lors'


def parse_lors_cfg(
        lors: Optional[Mapping],
        key: str = 'lors',
        parts: Sequence[str] = LORS_PARTS,
        defaults: Optional[Mapping[str, Mapping]] = None,
        missing: Optional[Mapping[str, str]] = None
) -> Dict[str, LorsStackConfig]:
    """Validate ``lors=dict(<part>=..., ...)``.

    Args:
        lors: the dict, or None (no LORS stack).
        key: its place in the user's config, for error messages.
        parts: the parts the detector has (e.g. ``('encoder', 'decoder')``).
        defaults: ``{part: dict}`` of defaults for keys a part's dict leaves
            out (a key given replaces its default, lists included).
        missing: ``{part: why}`` for parts the detector does not have, for
            a clearer error than "unknown key".

    Returns:
        ``{part: LorsStackConfig}`` of the parts given (not None).
    """
    if lors is None:
        return {}
    if not isinstance(lors, Mapping):
        raise TypeError(f'{key} must be a dict with keys {list(parts)}, got '
                        f'{type(lors).__name__}')
    for part in lors:
        if part not in parts and part in (missing or {}):
            raise ValueError(f'{key}.{part}: {missing[part]}; allowed keys '
                             f'of {key}: {list(parts)}')
    unknown = sorted(set(lors) - set(parts))
    if unknown:
        raise ValueError(f'unknown key(s) {unknown} in {key}; allowed: '
                         f'{list(parts)}')
    configs = {}
    for part, cfg in lors.items():
        if cfg is None:
            continue
        if isinstance(cfg, Mapping):
            cfg = {**(defaults or {}).get(part, {}), **cfg}
        configs[part] = LorsStackConfig.from_dict(cfg, f'{key}.{part}')
    return configs


class LorsStacksMixin:
    """Adds ``lors=dict(<part>=...)`` to a detector.

    Once the detector has built its own modules, the stack of each part given
    becomes a LORS stack (nothing built and thrown away, no layer
    subclassed), its shared weights registered once on the module that holds
    the stack. ``init_weights`` runs the detector's own init on the stock
    modules and re-derives the LORS stacks from the result (``init='fresh'``:
    each shared weight = the first layer's freshly initialised weight,
    private residuals zero), in place: the optimizer, built by mmengine
    before ``init_weights``, keeps the parameters the model uses. Loading a
    state dict (by any loader: mmdet's tools, ``init_detector``, mmengine's
    non-strict ``load_checkpoint``) refuses tensors that do not fit its LORS
    stacks, and LORS stacks it does not have.

    A detector class says where its stacks are:

    Attributes:
        lors_stack_paths: ``{part: model-relative path of the ModuleList of
            the layers}``; the owner of the shared weights is the module
            holding that list.
        lors_stack_defaults: ``{part: defaults of its LorsStackConfig
            dict}``.
        lors_missing_parts: ``{part: why this detector has none}``.

    Args:
        lors: ``dict(<part>=...)`` of
            :class:`~lors_mmdet.lors.LorsStackConfig` dicts.
        *args, **kwargs: the detector's arguments.
    """

    lors_stack_paths: Dict[str, str] = {}
    lors_stack_defaults: Dict[str, Dict] = {}
    lors_missing_parts: Dict[str, str] = {}
    lors_key = 'lors'

    def __init__(self, *args, lors: Optional[Mapping] = None,
                 **kwargs) -> None:
        self.lors_cfg = parse_lors_cfg(
            lors, self.lors_key, tuple(self.lors_stack_paths),
            self.lors_stack_defaults, self.lors_missing_parts)
        for part, config in self.lors_cfg.items():
            # mmdet's encoders / decoders index their first layer while
            # building: an empty stack would fail there, before the surgery
            num_layers = (kwargs.get(part) or {}).get('num_layers')
            if isinstance(num_layers, int) and num_layers < 1:
                raise ValueError(
                    f'{config.key} is given but model.{part}.num_layers = '
                    f'{num_layers}: the {part} has no layers to make a LORS '
                    f'stack of (a LORS stack needs at least 2)')
        super().__init__(*args, **kwargs)
        for part, config in self.lors_cfg.items():
            owner, layers = self.lors_stack_owner(part)
            self._check_lors_stack(part, owner, layers, config)
            apply_lors(owner, layers, config, key=config.key)

    @classmethod
    def stock_type(cls) -> str:
        """The registered type of the stock model this class makes LORS
        (``LorsDINO`` -> ``'DINO'``): the first base class that is no
        :class:`LorsStacksMixin`. A class that is its own stock model
        without ``lors`` (AdaMixer) returns its own type."""
        return next(base for base in cls.__mro__[1:]
                    if not issubclass(base, LorsStacksMixin)
                    and issubclass(base, nn.Module)).__name__

    def lors_stack_owner(self, part: str) -> Tuple[nn.Module, str]:
        """The module owning ``part``'s stack and the path of its layers in
        it (``(self.decoder, 'layers')``)."""
        return stack_owner_and_layers(self, self.lors_stack_paths[part])

    def _check_lors_stack(self, part: str, owner: nn.Module, layers: str,
                          config: LorsStackConfig) -> None:
        """Family-specific checks of a part's config before the surgery
        (the surgery checks the rest)."""

    def _load_from_state_dict(self, state_dict: Mapping[str, Tensor],
                              prefix: str, *args, **kwargs) -> None:
        """Refuse a state dict that does not fit the LORS stacks before
        anything is copied (mmengine's loading would only warn).

        Args:
            state_dict: what is loaded (this detector's keys under
                ``prefix``).
            prefix: the key prefix of this detector's tensors.
            *args, **kwargs: the rest of ``nn.Module._load_from_state_dict``.

        Raises:
            CheckpointMismatchError: see
                :func:`~lors_mmdet.engine.check_lors_state_dict`.
        """
        check_lors_state_dict(self, state_dict, prefix)
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def init_weights(self) -> None:
        """The detector's init on the stock modules, then the LORS stacks
        from it."""
        with init_as_stock(self):
            super().init_weights()

    def lors_stacks(self) -> List[Tuple[str, LorsStack]]:
        """``(path, stack)`` of the model's LORS stacks (for tools)."""
        return find_lors_stacks(self)


def stack_owner_and_layers(model: nn.Module, stack_path: str
                           ) -> Tuple[nn.Module, str]:
    """The module owning a stack and the path of its layers in it
    (``'decoder.layers'`` -> ``(model.decoder, 'layers')``)."""
    owner, _, layers = stack_path.rpartition('.')
    return (model.get_submodule(owner) if owner else model), layers


def lors_class_of(model: nn.Module) -> type:
    """The LORS detector class of a LORS detector, or the one that makes a
    stock detector LORS (stock ``DINO`` -> ``LorsDINO``; ``AdaMixer`` is its
    own).

    Raises:
        TypeError: no LORS detector class knows the model's type.
    """
    if isinstance(model, LorsStacksMixin):
        return type(model)
    name = type(model).__name__
    cls = lors_classes().get(name)
    if cls is None:
        raise TypeError(f'no LORS detector class makes {name} LORS (classes with '
                        f'model.lors: the DETR family, AdaMixer, Sparse R-CNN, '
                        f'QueryInst)')
    return cls


def lors_classes() -> Dict[str, type]:
    """``{stock type: the registered LORS detector class that makes it LORS}``."""
    from mmdet.registry import MODELS
    return {cls.stock_type(): cls for cls in MODELS.module_dict.values()
            if isinstance(cls, type) and issubclass(cls, LorsStacksMixin)
            and cls.lors_stack_paths}


def lors_stack_paths_of(model: nn.Module) -> Dict[str, str]:
    """``{part: path of the stack's layers}`` of a LORS detector or of the
    stock detector a registered LORS class makes LORS (see
    :func:`lors_class_of`).

    Raises:
        TypeError: no LORS detector class knows the model's type.
    """
    return dict(lors_class_of(model).lors_stack_paths)


def part_parameters(model: nn.Module,
                    stack_paths: Mapping[str, str]) -> Dict[str, int]:
    """``{part: parameters}`` of the module owning each part's stack
    (``model.decoder``, AdaMixer's ``model.roi_head``; each tensor once, the
    shared weights of its LORS stack included).

    Args:
        model: a stock or LORS detector.
        stack_paths: ``{part: path of the stack's layers}``, the
            ``lors_stack_paths`` of the LORS detector class.
    """
    return {part: sum(p.numel() for p in
                      stack_owner_and_layers(model, path)[0].parameters())
            for part, path in stack_paths.items()}


@torch.no_grad()
def stock_to_lors(stock: nn.Module, parts: Mapping[str, Any],
                  stack_paths: Mapping[str, str]) -> Dict[str, float]:
    """Turn the stacks of a stock detector into LORS from its own weights.

    Args:
        stock: a stock detector with trained weights, changed in place.
        parts: ``{part: LorsStackConfig dict}`` (``init`` is set to
            ``'dense'``: shared = the layers' mean, each private residual the
            truncated SVD of its difference; an adaptive generator's private
            residual starts at zero, so it keeps the mean generator).
        stack_paths: ``{part: path of the stack's layers}``.

    Returns:
        ``{part: largest relative Frobenius error of a weight matrix}``.
    """
    before = {k: v.clone() for k, v in stock.state_dict().items()}
    prefixes = {}
    for part, config in parts.items():
        owner, layers = stack_owner_and_layers(stock, stack_paths[part])
        apply_lors(owner, layers, dict(config or {}, init='dense'),
                   key=f'{LORS_KEY}.{part}')
        prefixes[part] = stack_paths[part] + '.'
    merged = copy.deepcopy(stock)
    merge_lors(merged)
    errors = {part: 0.0 for part in parts}
    for key, value in merged.state_dict().items():
        for part, prefix in prefixes.items():
            if key.startswith(prefix) and value.dim() > 1:
                error = float((value - before[key]).norm() /
                              before[key].norm().clamp_min(1e-12))
                errors[part] = max(errors[part], error)
    return errors
