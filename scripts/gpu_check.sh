#!/usr/bin/env bash
# One prepared run of the GPU figures: training, eval and loss speed of full-width FCN-8s on one
# CUDA GPU in at most ~8 minutes; see scripts/gpu_check.py and docs/benchmarks.md.
#
#   bash scripts/gpu_check.sh [--out FILE] [--peak-tflops N] [--budget-s 480]
#   bash scripts/gpu_check.sh --dry-run [--out FILE]     (CPU, tiny sizes, under a minute)
#
# $PYTHON runs it (default python3). Where that python has no hydra-core, the folder that
# scripts/gpu_check_deps.sh fills (build/gpu_deps/site, or $GPU_CHECK_DEPS) goes on PYTHONPATH.
# A hard stop (SIGINT after $GPU_CHECK_TIMEOUT_S, default 540 s: --budget-s's 480 and a minute)
# keeps a hung step from running on; the script then writes what it measured.
set -euo pipefail
cd "$(dirname "$0")/.."

PYTHON=${PYTHON:-python3}
DEPS=${GPU_CHECK_DEPS:-build/gpu_deps/site}
export PYTHONPATH=".${PYTHONPATH:+:$PYTHONPATH}"
if ! "$PYTHON" -c "import hydra, omegaconf" 2>/dev/null; then
    if [ ! -d "$DEPS" ]; then
        echo "gpu_check: $PYTHON has no hydra-core/omegaconf and $DEPS is missing;" \
            "run scripts/gpu_check_deps.sh where PyPI is reachable and bring $DEPS along" >&2
        exit 2
    fi
    export PYTHONPATH="$PYTHONPATH:$DEPS"
fi
export PYTHONUNBUFFERED=1
exec timeout --signal=INT --kill-after=30 "${GPU_CHECK_TIMEOUT_S:-540}" "$PYTHON" scripts/gpu_check.py "$@"
