#!/usr/bin/env bash
# The device check, as ONE command on the GPU machine (bench/gpu/README.md; prepare.sh prints the
# calls). Within 6 minutes: joins and installs the carried wheels; exports b0, b3, b7 (fp32, and fp16
# where the exporter offers --precision) with random weights using the machine's own torch; runs
# `pytest -m gpu tests/gpu` (which exports lite0 with its ImageNet weights for the real-photo checks);
# then bench/gpu/check.py: bare ORT CUDA at batch 1..256, GPU memory over random batch sizes after
# warm-up, the service at saturation (HTTP 1080p JPEG with Pillow vs nvImageCodec, V2 gRPC pixels and
# image). Writes gpu.json, the plots and logs to $OUT (else bench/results/gpu).
#
#   bench/gpu/run.sh --wheels DIR          on the GPU machine
#   bench/gpu/run.sh --dry-run             here, on the CPU provider, small settings, < 3 minutes
# Options: --repository DIR (a model repository to use; missing models are exported into it),
#          --out DIR, --skip-tests
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS
LIMIT_S=355          # the whole check, including installing and exporting
dry=0; wheels=""; repository=""; out=""; skip_tests=0
while (( $# )); do
    case "$1" in
        --dry-run) dry=1 ;;
        --wheels) wheels=$2; shift ;;
        --repository) repository=$2; shift ;;
        --out) out=$2; shift ;;
        --skip-tests) skip_tests=1 ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
step() { echo "[run.sh +$((SECONDS - started))s] $*"; }
left() { echo $(( LIMIT_S - (SECONDS - started) )); }

if (( dry )); then
    PY=${PYTHON:-.venv/bin/python}
    profile=dry
    variants=b0
    repository=${repository:-${TMPDIR:-/tmp}/effnet-gpu-dry-models}
    out=${out:-bench/results/gpu-dry}
else
    PY=${PYTHON:-python3}
    profile=gpu
    variants=b0,b3,b7
    repository=${repository:-/tmp/effnet-gpu-models}
    out=${out:-${OUT:-bench/results/gpu}}
    nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || true
    if [[ -n "$wheels" ]]; then
        step "joining and installing wheels from $wheels"
        for first in "$wheels"/*.whl.part00; do
            [[ -e "$first" ]] || continue
            whole=${first%.part00}
            cat "${whole}".part* > "$whole"
        done
        "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target /tmp/effnet-site "$wheels"/*.whl || { echo "wheel install failed" >&2; exit 1; }
        export PYTHONPATH=/tmp/effnet-site:$PWD
    fi
    if [[ ! -d service/_generated ]]; then
        "$PY" -m service.protogen || { echo "service/_generated missing: carry it (prepare.sh)" >&2; exit 1; }
    fi
    "$PY" -c "import onnxruntime as o; print('onnxruntime', o.__version__, o.get_available_providers())"
fi
export PYTHONPATH=${PYTHONPATH:-$PWD}
mkdir -p "$out" "$repository"

step "models in $repository"
precision_flag=""
if "$PY" -m models.export --help 2>/dev/null | grep -q -- "--precision"; then
    precision_flag="--precision fp32,fp16"
else
    echo "models.export has no --precision yet: fp32 only (fp16 figures will be missing)"
fi
missing=$("$PY" - "$repository" "$variants" <<'EOF'
import sys
from pathlib import Path
repo, variants = Path(sys.argv[1]), sys.argv[2].split(",")
print(",".join(v for v in variants if not list((repo / v).glob("*/model.onnx"))))
EOF
)
if [[ -n "$missing" ]]; then
    # shellcheck disable=SC2086
    "$PY" -m models.export --variant "$missing" --weights random --repository "$repository" $precision_flag \
        > "$out/export.log" 2>&1 || { echo "export failed:"; tail -20 "$out/export.log"; }
fi

if (( ! skip_tests )); then
    step "pytest -m gpu"
    timeout $(( $(left) > 150 ? 100 : 30 )) "$PY" -m pytest -q -m gpu tests/gpu -p no:cacheprovider \
        2>&1 | tee "$out/pytest-gpu.log" | tail -15
fi

budget=$(( $(left) - 10 ))
step "check.py (budget ${budget}s)"
timeout $(( budget + 20 )) "$PY" -m bench.gpu.check --profile "$profile" --repository "$repository" \
    --out "$out" --budget-s "$budget"
status=$?
step "done, status $status; results in $out"
ls -la "$out"
exit $status
