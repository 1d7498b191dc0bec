#!/usr/bin/env bash
# Run HERE (the CPU machine with PyPI access), before the device check (bench/gpu/README.md). It:
#  1. checks that the carried set is complete (bench/gpu/carried.py: every dependency resolves to
#     bench/gpu/wheels.txt or to the image's packages);
#  2. downloads the cp312 manylinux wheels of wheels.txt into .gpuwheels/all (git-ignored, repository
#     root) and records the requirements of those this venv does not install (wheel-requires.json);
#  3. repacks them (bench/gpu/transfer.py: members the device never loads left out, large ones LZMA),
#     into .gpuwheels/repacked;
#  4. splits them into device calls (.gpuwheels/call-N, each with manifest.json), filled up to what a
#     call carries beside the working tree;
#  5. builds service/_generated (gRPC code; git-ignored, so the check call carries it);
#  6. prints the exact device calls.
# Usage: bench/gpu/prepare.sh [--no-download] [--download-only]
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
DEST=.gpuwheels
STASH=/root/effnet-wheels   # on the device machine, outside the working tree (lives while it is warm)

download=1; download_only=0
for arg in "$@"; do
    case "$arg" in
        --no-download) download=0 ;;
        --download-only) download_only=1 ;;
        *) echo "prepare.sh: unknown argument $arg" >&2; exit 2 ;;
    esac
done

mkdir -p "$DEST/all"
if (( download )); then
    grep -vE '^\s*(#|$)' bench/gpu/wheels.txt | sed 's/#.*//' | xargs "$PY" -m pip download --quiet \
        --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
        --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
        --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
        --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
        --platform manylinux1_x86_64 -d "$DEST/all"
    "$PY" -m bench.gpu.carried --record >/dev/null
fi
"$PY" -m bench.gpu.carried
(( download_only )) && exit 0

"$PY" -m bench.gpu.transfer repack --source "$DEST/all" --dest "$DEST/repacked"
"$PY" -m service.protogen >/dev/null

# What a call carries besides the pieces: the working tree (tracked and untracked-not-ignored files),
# service/_generated, and a margin of 1 MiB.
tree=$(git ls-files -z -co --exclude-standard | xargs -0 stat -c %s 2>/dev/null | awk '{s+=$1} END {print s+0}')
generated=$(du -sb service/_generated | cut -f1)
capacity=$(awk -v t="$tree" -v g="$generated" 'BEGIN {printf "%.2f", (64*1048576 - t - g - 1048576) / 1048576}')
calls=$("$PY" -m bench.gpu.transfer plan --source "$DEST/repacked" --dest "$DEST" --capacity-mib "$capacity" \
    | "$PY" -c 'import json,sys; print(json.load(sys.stdin)["calls"])')

echo
echo "wheels: $(ls "$DEST"/repacked/*.whl | wc -l), $(du -sh "$DEST/repacked" | cut -f1) repacked" \
     "(from $(du -sh "$DEST/all" | cut -f1)); $calls calls of at most ${capacity} MiB each"
echo
echo "Device calls, back to back on one warm machine (device tool: read status first; run, kind left out;"
echo "the machine goes back 30 s after a call, and the wheels copied so far with it: the calls then start"
echo "again at 1). The tool sends the checkout its session started in: run this script there"
echo "(.gpuwheels/ and service/_generated are git-ignored, so each call names what it needs in carry)."
for n in $(seq 1 "$calls"); do
    dir="$DEST/call-$n"
    echo
    if (( n < calls - 1 )); then
        echo "call $n: carry [\"$dir\"]  ($(du -sh "$dir" | cut -f1))"
        echo "  command: mkdir -p $STASH && cp $dir/* $STASH/ && ls $STASH | wc -l"
        echo "  timeout_s: 120"
    elif (( n == calls - 1 )); then
        echo "call $n (and the export): carry [\"$dir\"]  ($(du -sh "$dir" | cut -f1))"
        echo "  command: mkdir -p $STASH && cp $dir/* $STASH/ && PYTHONUNBUFFERED=1 bash bench/gpu/run.sh --stash $STASH export 2>&1 | tee \$OUT/export.log"
        echo "  timeout_s: 170   (the export ends itself within 120 s)"
    else
        echo "call $n (the check): carry [\"$dir\", \"service/_generated\"]  ($(du -sh "$dir" | cut -f1))"
        echo "  command: mkdir -p $STASH && cp $dir/* $STASH/ && PYTHONUNBUFFERED=1 bash bench/gpu/run.sh --stash $STASH --budget-s 420 --check-budget-s 290 check diagnose-if-slow 2>&1 | grep -v -e cudnn_fe -e Initializer | tee \$OUT/run.log"
        echo "  timeout_s: 480   (the check, and the diagnosis if the runtime is slow, end themselves within 420 s)"
        echo "  rerun at once if needed and device time is left: carry [\"service/_generated\"] only, timeout_s 360, command:"
        echo "    PYTHONUNBUFFERED=1 bash bench/gpu/run.sh --stash $STASH --budget-s 300 --skip-tests check 2>&1 | tee \$OUT/run.log"
    fi
done
echo
echo "Then give_back. gpu.json, run.log, pytest-gpu.xml and the plots come back from \$OUT."
