"""mmdet-registered modules of the plugin."""
from . import adamixer  # noqa: F401,E402
from . import backbones  # noqa: F401,E402
from . import detr  # noqa: F401,E402
from . import sparse_rcnn  # noqa: F401,E402
