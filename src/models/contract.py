"""The model contract every seglab model keeps, in code: `SegmentationModel` and `main_logits`.

A model maps float images `(N, 3, H, W)` to logits `(N, num_classes, H, W)` for any `H, W >= 32`
(multiples of 32 or not). What used to be known only to the code that special-cased it is
declared by the model itself:

- an auxiliary output (torchvision's `aux` head) is returned as `{"out", "aux"}` in training mode
  only (`outputs`); evaluation, export and prediction always get the logits tensor, and
  `main_logits` is the one unwrap for code that may see either;
- the num_classes-wide layers are declared once (`declare_head`) and keep themselves in fp32
  under CPU bf16 autocast (`src/models/precision.py` says why);
- the config keys that load external weights are listed in `weight_keys`, so a model rebuilt from
  a checkpoint (src/utils/checkpoint.py) sets exactly those to None instead of guessing.

`tests/test_model_contract.py` runs every preset through the contract.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import ClassVar

from torch import Tensor, nn

from .precision import keep_fp32_under_cpu_autocast

MIN_INPUT_SIZE = 32  # the smallest height and width every model accepts


class SegmentationModel(nn.Module):
    """Base of every seglab model: logits at input size, declared head, aux and weight keys."""

    # Dotted keys of the model's own config that load external weights (a pretrained file, a
    # download, another checkpoint). A model rebuilt from a checkpoint gets each set to None:
    # the checkpoint's tensors replace whatever they would load.
    weight_keys: ClassVar[tuple[str, ...]] = ()

    def declare_head(self, *layers: nn.Module) -> None:
        """Declare the num_classes-wide layers: each runs in fp32 when CPU bf16 autocast would break it."""
        for layer in layers:
            keep_fp32_under_cpu_autocast(layer)

    def head_layers(self) -> list[str]:
        """Names of the declared head layers (what tests and tools inspect)."""
        return [name for name, module in self.named_modules() if getattr(module, "is_head_layer", False)]

    def outputs(self, logits: Tensor, aux: Tensor | None = None) -> Tensor | dict[str, Tensor]:
        """What forward returns: `{"out", "aux"}` in training when there is an aux output, else the logits."""
        if self.training and aux is not None:
            return {"out": logits, "aux": aux}
        return logits


def main_logits(output: Tensor | Mapping[str, Tensor]) -> Tensor:
    """The logits of any model output: the tensor itself, or the training dict's "out"."""
    return output["out"] if isinstance(output, Mapping) else output


def auxiliary_logits(output: Tensor | Mapping[str, Tensor]) -> Tensor | None:
    """The auxiliary logits of a training output, or None when the model returned only logits."""
    return output.get("aux") if isinstance(output, Mapping) else None
