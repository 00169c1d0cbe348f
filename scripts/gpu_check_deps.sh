#!/usr/bin/env bash
# Fetch what scripts/gpu_check.sh needs beyond the framework, for a GPU machine with no network.
#
#   bash scripts/gpu_check_deps.sh [DEST]      (default DEST: build/gpu_deps, git-ignored)
#
# A GPU machine's stock image often has torch, torchvision, lightning, PyYAML and OpenCV but no
# hydra-core, omegaconf or antlr4. All three are pure Python: the two wheels are unzipped and antlr4's
# sdist (it has no wheel on PyPI) gives its src/antlr4 package, all into DEST/site, which
# gpu_check.sh puts on PYTHONPATH. Nothing is installed; the versions are the ones
# pyproject.toml's pins resolve to in the project venv.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEST=${1:-build/gpu_deps}
HYDRA_CORE=hydra-core==1.3.8
OMEGACONF=omegaconf==2.3.1
ANTLR4=antlr4-python3-runtime==4.9.3  # omegaconf 2.3's parser is generated for ANTLR 4.9

rm -rf "$DEST"
mkdir -p "$DEST/download" "$DEST/site"
"$PYTHON" -m pip download --quiet --no-deps --only-binary :all: -d "$DEST/download" "$HYDRA_CORE" "$OMEGACONF"
"$PYTHON" -m pip download --quiet --no-deps --no-binary :all: -d "$DEST/download" "$ANTLR4"

for wheel in "$DEST"/download/*.whl; do
    "$PYTHON" -m zipfile -e "$wheel" "$DEST/site"
done
sdist=$(ls "$DEST"/download/antlr4-python3-runtime-*.tar.gz)
tar -xzf "$sdist" -C "$DEST/download"
cp -r "${sdist%.tar.gz}/src/antlr4" "$DEST/site/"

for package in hydra omegaconf antlr4; do
    [ -f "$DEST/site/$package/__init__.py" ] || { echo "gpu_check_deps: $package missing in $DEST/site" >&2; exit 1; }
done
echo "gpu_check deps in $DEST/site: $(ls "$DEST/site" | grep -v dist-info | tr '\n' ' ')"
