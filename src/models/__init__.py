"""seglab's models: the FCN family on VGG16, its compact variants and torchvision baselines."""

from .complexity import count_parameters, gflops
from .contract import SegmentationModel, main_logits
from .fcn import FCN8s, FCN16s, FCN32s
from .fcn_compact import FCN8sCompact
from .fcns import FCNs
from .torchvision_models import TorchvisionSegmentation

__all__ = [
    "FCN8s",
    "FCN8sCompact",
    "FCN16s",
    "FCN32s",
    "FCNs",
    "SegmentationModel",
    "TorchvisionSegmentation",
    "count_parameters",
    "gflops",
    "main_logits",
]
