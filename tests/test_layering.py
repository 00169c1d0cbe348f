"""No module imports a layer above its own: the tensor code stays usable without Lightning or Hydra."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

from tests.conftest import ROOT

SRC = ROOT / "src"
# Modules every layer may use: they import nothing of seglab's but each other.
FOUNDATION = ("src.utils.errors", "src.utils.files")
FRAMEWORKS = ("lightning", "pytorch_lightning", "lightning_utilities", "hydra", "omegaconf")
# layer -> (its files, the imports it must not make)
LAYERS = {
    "models": (["models"], (*FRAMEWORKS, "torchmetrics", "src.data", "src.losses", "src.metrics")),
    "losses": (["losses"], (*FRAMEWORKS, "torchmetrics", "src.data", "src.models", "src.metrics")),
    "metrics": (["metrics", "metrics.py"], (*FRAMEWORKS, "src.data", "src.models", "src.losses")),
    "data": (["data"], ("hydra", "src.models", "src.losses", "src.metrics")),
}
# above every layer: what puts the parts together
GLUE = ("src.module", "src.callbacks", "src.train", "src.eval", "src.predict", "src.inference", "src.utils")
# Known reaches into the glue, each with its reason (none today).
EXCEPTIONS: dict[str, tuple[str, ...]] = {}


def imports(path: Path) -> set[str]:
    """Every module `path` imports, relative imports made absolute."""
    package = list(path.relative_to(ROOT).with_suffix("").parts[:-1])
    found = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = package[: len(package) - node.level + 1] if node.level else []
            found.add(".".join([*base, *([node.module] if node.module else [])]))
    return found


def files_of(parts: list[str]) -> list[Path]:
    """The Python files of a layer (a package, a module, or both where one replaced the other)."""
    paths = [SRC / part for part in parts]
    return sorted(f for p in paths if p.exists() for f in ([p] if p.is_file() else p.rglob("*.py")))


def below(name: str, forbidden: tuple[str, ...], exceptions: tuple[str, ...] = ()) -> bool:
    """Whether module `name` is allowed: not forbidden, and no glue unless it is foundation."""
    if name.startswith(FOUNDATION) or name in exceptions:
        return True
    return not any(name == f or name.startswith(f + ".") for f in (*forbidden, *GLUE))


@pytest.mark.parametrize("layer", list(LAYERS))
def test_a_layer_imports_nothing_above_it(layer: str) -> None:
    parts, forbidden = LAYERS[layer]
    files = files_of(parts)
    assert files, f"no files for {layer}"
    wrong = {
        f"{path.relative_to(ROOT)}: {name}"
        for path in files
        for name in imports(path)
        if not below(name, forbidden, EXCEPTIONS.get(layer, ()))
    }
    assert not wrong, sorted(wrong)


def test_the_foundation_imports_no_seglab_module() -> None:
    for module in FOUNDATION:
        path = ROOT / (module.replace(".", "/") + ".py")
        seglab = {name for name in imports(path) if name.startswith("src") and name not in FOUNDATION}
        assert not seglab, (module, seglab)


def test_the_tensor_code_imports_without_lightning_or_hydra() -> None:
    """Every module of src/models, src/losses and the metrics, imported in a fresh interpreter."""
    code = (
        "import importlib, pkgutil, sys\n"
        "import src.metrics\n"
        "for name in ('src.models', 'src.losses'):\n"
        "    package = importlib.import_module(name)\n"
        "    for module in pkgutil.walk_packages(package.__path__, name + '.'):\n"
        "        importlib.import_module(module.name)\n"
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'lightning', 'pytorch_lightning', 'hydra'}))\n"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip() == "[]"
