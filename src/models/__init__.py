"""seglab's models: the FCN family on VGG16, its compact variants and torchvision baselines."""

from .complexity import count_parameters, gflops
from .fcn import FCN8s, FCN16s, FCN32s
from .fcn_compact import FCN8sCompact
from .fcns import FCNs
from .torchvision_models import TorchvisionSegmentation, tv_deeplabv3_resnet50, tv_fcn_resnet50

__all__ = [
    "FCN8s",
    "FCN8sCompact",
    "FCN16s",
    "FCN32s",
    "FCNs",
    "TorchvisionSegmentation",
    "count_parameters",
    "gflops",
    "tv_deeplabv3_resnet50",
    "tv_fcn_resnet50",
]
