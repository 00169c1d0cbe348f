"""Without seglab's `smp` extra, choosing an smp preset stops with the extra's name.

Runs whether or not the extra is installed: the package is hidden when it is.
"""

from __future__ import annotations

import sys

import hydra
import pytest

from src.utils.errors import exit_on_user_error


def test_choosing_an_smp_model_without_the_extra_names_it(
    smoke_cfg, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = smoke_cfg("model=unet_resnet34", "~model.backbone")
    monkeypatch.setitem(sys.modules, "segmentation_models_pytorch", None)  # as if never installed
    with pytest.raises(SystemExit) as caught, exit_on_user_error():  # what the entry points do
        hydra.utils.instantiate(cfg.model)
    assert str(caught.value) == (
        "seglab: error: model needs seglab's 'smp' extra, which is not installed: pip install -e '.[smp]'"
    )
