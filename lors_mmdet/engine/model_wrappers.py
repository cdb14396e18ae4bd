from typing import Optional, Sequence

import torch.nn as nn
from mmengine.model import MMDistributedDataParallel
from mmengine.registry import MODEL_WRAPPERS


@MODEL_WRAPPERS.register_module()
class DeviceAwareDistributedDataParallel(MMDistributedDataParallel):
    """mmengine's DDP wrapper that also accepts a model living on the CPU.

    mmengine always passes ``device_ids=[LOCAL_RANK]``, which torch rejects for
    CPU modules; on CPU (gloo) the ids are dropped, on GPU nothing changes.

    Args:
        module: The model to wrap.
        device_ids: GPU ids, as mmengine passes them.
        **kwargs: Passed on to :class:`MMDistributedDataParallel`.
    """

    def __init__(self,
                 module: nn.Module,
                 device_ids: Optional[Sequence[int]] = None,
                 **kwargs) -> None:
        on_cpu = all(p.device.type == 'cpu' for p in module.parameters())
        super().__init__(
            module=module, device_ids=None if on_cpu else device_ids, **kwargs)
