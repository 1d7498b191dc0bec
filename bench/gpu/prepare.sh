#!/usr/bin/env bash
# Run HERE (the CPU machine with PyPI access), before the device check. It:
#  1. downloads the cp312 manylinux wheels the GPU machine's image lacks (bench/gpu/wheels.txt)
#     into the git-ignored folder .gpuwheels/ (repository root);
#  2. splits every wheel over 60 MB into 60 MB parts (one device call carries at most 64 MiB);
#  3. builds service/_generated (gRPC code; git-ignored, so it must be carried too);
#  4. prints the exact sequence of device calls: which paths each one carries (`carry`) and where it
#     stores them on the machine between calls (/root/effnet-wheels, which lives as long as the
#     machine is warm: make the calls back to back, the machine goes back after 30 s idle).
# Usage: bench/gpu/prepare.sh [--no-download]   (--no-download: reuse what .gpuwheels/ holds)
set -euo pipefail
cd "$(dirname "$0")/../.."
ROOT=$PWD
PY=${PYTHON:-$ROOT/.venv/bin/python}
DEST=.gpuwheels
PART_MB=60
STASH=/root/effnet-wheels   # on the device machine, outside the working tree (survives between calls)

download=1
[[ "${1:-}" == "--no-download" ]] && download=0

mkdir -p "$DEST/all"
if (( download )); then
    grep -vE '^\s*(#|$)' bench/gpu/wheels.txt | while read -r requirement; do
        "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
            --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
            --platform manylinux_2_34_x86_64 --platform manylinux_2_35_x86_64 \
            --platform manylinux1_x86_64 -d "$DEST/all" "$requirement"
    done
fi
"$PY" -m service.protogen >/dev/null

# Batches of at most ~60 MB: whole small wheels packed together, big wheels in 60 MB parts.
rm -rf "$DEST"/call-*
call=1
used=0
new_call() { call=$((call + 1)); used=0; }
mkdir -p "$DEST/call-$call"
for wheel in "$DEST"/all/*.whl; do
    size=$(stat -c %s "$wheel")
    mb=$(( (size + 1048575) / 1048576 ))
    if (( mb > PART_MB )); then
        split -b "${PART_MB}M" -d -a 2 "$wheel" "$DEST/tmp-part-"
        for part in "$DEST"/tmp-part-*; do
            (( used > 0 )) && new_call && mkdir -p "$DEST/call-$call"
            mv "$part" "$DEST/call-$call/$(basename "$wheel").part${part##*-}"
            used=$PART_MB
        done
        new_call; mkdir -p "$DEST/call-$call"
    else
        if (( used + mb > PART_MB )); then new_call; mkdir -p "$DEST/call-$call"; fi
        cp "$wheel" "$DEST/call-$call/"
        used=$(( used + mb ))
    fi
done
rmdir "$DEST/call-$call" 2>/dev/null || true
calls=$(ls -d "$DEST"/call-* | wc -l)

echo "wheels: $(ls "$DEST"/all/*.whl | wc -l) in $DEST/all ($(du -sh "$DEST/all" | cut -f1)); $calls carrying calls"
echo
echo "Device calls, back to back on one warm machine (device tool: run; kind left out):"
n=0
for dir in "$DEST"/call-*; do
    n=$((n + 1))
    echo
    echo "call $n of $((calls + 1)): carry [\"$dir\"]  ($(du -sh "$dir" | cut -f1): $(ls "$dir" | tr '\n' ' '))"
    echo "  command: mkdir -p $STASH && cp $dir/* $STASH/ && ls -la $STASH"
    echo "  timeout_s: 120"
done
echo
echo "call $((calls + 1)) of $((calls + 1)) (the check itself): carry [\"service/_generated\"]"
echo "  command: PYTHONUNBUFFERED=1 bash bench/gpu/run.sh --wheels $STASH 2>&1 | tee \$OUT/run.log"
echo "  timeout_s: 420   (run.sh stops itself at 6 minutes; leaves time for one rerun of the budget)"
echo
echo "Then give_back. Results: gpu.json, run.log and the plots come back from \$OUT."
