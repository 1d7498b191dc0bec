#!/usr/bin/env bash
# Run HERE (the CPU machine with PyPI access), before the device check. It:
#  1. downloads the cp312 manylinux wheels the GPU machine's image lacks (bench/gpu/wheels.txt)
#     into the git-ignored folder .gpuwheels/ (repository root);
#  2. splits every wheel over 56 MiB into parts and packs parts and wheels into calls of at most
#     56 MiB (one device call carries at most 64 MiB, the working tree included);
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
PART_MIB=56  # + the working tree (~2 MiB) stays under the 64 MiB a call carries
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

# Pack into calls of at most PART_MIB each (first fit, largest first): a wheel over PART_MIB is split
# into PART_MIB parts (joined again by run.sh); the rest of each call's 64 MiB is the working tree.
rm -rf "$DEST"/call-*
"$PY" - "$DEST" "$PART_MIB" <<'PACK'
import shutil, sys
from pathlib import Path

dest, part = Path(sys.argv[1]), int(sys.argv[2]) * 2**20
items = []  # (size, name, source path, offset)
for wheel in sorted((dest / "all").glob("*.whl")):
    size = wheel.stat().st_size
    if size <= part:
        items.append((size, wheel.name, wheel, 0))
    else:
        for index, offset in enumerate(range(0, size, part)):
            items.append((min(part, size - offset), f"{wheel.name}.part{index:02d}", wheel, offset))
calls: list[list[tuple]] = []
for item in sorted(items, key=lambda i: -i[0]):
    for call in calls:
        if sum(i[0] for i in call) + item[0] <= part:
            call.append(item)
            break
    else:
        calls.append([item])
for number, call in enumerate(calls, 1):
    folder = dest / f"call-{number}"
    folder.mkdir()
    for size, name, source, offset in call:
        with source.open("rb") as src, (folder / name).open("wb") as out:
            src.seek(offset)
            out.write(src.read(size))
PACK
calls=$(ls -d "$DEST"/call-* | wc -l)

last="$DEST/call-$calls"   # the smallest: it rides along with the check itself
total=$calls
echo "wheels: $(ls "$DEST"/all/*.whl | wc -l) in $DEST/all ($(du -sh "$DEST/all" | cut -f1)); $total device calls"
echo
echo "Device calls, back to back on one warm machine (device tool: run, kind left out). The tool sends"
echo "the checkout its session started in: run this script there (.gpuwheels/ and service/_generated"
echo "are git-ignored, so each call names them in carry)."
for n in $(seq 1 $((calls - 1))); do
    dir="$DEST/call-$n"
    echo
    echo "call $n of $total: carry [\"$dir\"]  ($(du -sh "$dir" | cut -f1): $(ls "$dir" | tr '\n' ' '))"
    echo "  command: mkdir -p $STASH && cp $dir/* $STASH/ && ls -la $STASH"
    echo "  timeout_s: 120"
done
echo
echo "call $total of $total (the check): carry [\"$last\", \"service/_generated\"]  ($(du -sh "$last" | cut -f1): $(ls "$last" | tr '\n' ' '))"
echo "  command: mkdir -p $STASH && cp $last/* $STASH/ && PYTHONUNBUFFERED=1 bash bench/gpu/run.sh --wheels $STASH 2>&1 | tee \$OUT/run.log"
echo "  timeout_s: 420   (run.sh ends itself within 6 minutes)"
echo
echo "Then give_back. gpu.json, run.log and the plots come back from \$OUT; copy them to bench/results/."
