#!/usr/bin/env bash
# Regenerate the version locks in requirements/ from pyproject.toml (`make lock`; pip-tools).
#
# all.txt is resolved first (every extra but gpu); the others are resolved under it as a constraint,
# so one package has one version in every lock. Installs use `pip install --no-deps -r LOCK`: exactly
# what the lock says and nothing a release of today could add. Left out on purpose:
#   triton      torch's compiler backend for GPUs (0.9 GB); exporting to ONNX never uses it.
#   onnxruntime in the *-gpu.txt locks, which have onnxruntime-gpu instead (both own the `onnxruntime`
#               package and cannot share a venv).
set -euo pipefail
cd "$(dirname "$0")/.."
COMPILER=${COMPILER:-pip-compile}  # (a PIP_* name would be read by pip as an option)
compile() {
    local out=$1
    shift
    echo "locking requirements/$out"
    "$COMPILER" --quiet --strip-extras --no-emit-index-url --no-emit-find-links \
        --output-file "requirements/$out" "$@" pyproject.toml
}
rm -f requirements/*.txt  # resolve afresh, not from the previous pins
compile all.txt --unsafe-package triton --extra export --extra dev --extra bench --extra deploy
compile serve.txt -c requirements/all.txt
compile export.txt -c requirements/all.txt --unsafe-package triton --extra export
compile test.txt -c requirements/all.txt --unsafe-package triton --extra export --extra dev
# The same three with onnxruntime-gpu (and nvImageCodec, CuPy) instead of onnxruntime: `make ... DEVICE=gpu`.
compile serve-gpu.txt -c requirements/all.txt --unsafe-package onnxruntime --extra gpu
compile export-gpu.txt -c requirements/all.txt --unsafe-package triton --unsafe-package onnxruntime \
    --extra export --extra gpu
compile test-gpu.txt -c requirements/all.txt --unsafe-package triton --unsafe-package onnxruntime \
    --extra export --extra dev --extra gpu
