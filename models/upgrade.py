"""Give models already in a repository the explain outputs, without torch: `python -m models.upgrade`.

Each version folder whose model.json lists no `features` gets its graph rewritten by models/heads.py
(`features`, `cam`, `cam_classes`, the optional `cam_class_ids` input) and its model.json the new
outputs and digest; the folder is replaced as a whole (models/repository.py), so a server polling
the repository sees the old version or the new one, never half of each. fp16 and int8 graphs are
upgraded as they are (the pass reads their dequantised weights). Cascades have no graph of their own.
A graph whose head the pass cannot find is reported and left as it was: it keeps serving.
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import sys
from collections.abc import Sequence
from pathlib import Path

from models.errors import ExportError
from models.heads import FEATURES, HeadNotFound, add_to_file, output_specs
from models.repository import staged_version
from service.model_spec import MODEL_FILE, SPEC_FILE, ModelSpec


def upgrade_version(repository: Path, folder: Path) -> bool:
    """Upgrade one version folder; False when it has the outputs already."""
    spec = ModelSpec.from_file(folder / SPEC_FILE)
    if FEATURES in spec.output_names:
        return False
    with staged_version(repository, folder.parent.name, int(folder.name)) as staging:
        for item in folder.iterdir():
            if item.is_file():
                shutil.copy2(item, staging / item.name)
        try:
            add_to_file(staging / MODEL_FILE)
        except HeadNotFound as e:
            raise ExportError(f"{folder}: {e}") from None
        base = [o for o in spec.outputs if o.name in ("logits", "probabilities")]
        upgraded = spec.model_copy(
            update={
                "outputs": (*base, *output_specs(staging / MODEL_FILE)),
                "onnx_sha256": hashlib.sha256((staging / MODEL_FILE).read_bytes()).hexdigest(),
            }
        )
        (staging / SPEC_FILE).write_text(ModelSpec.model_validate(upgraded.model_dump()).to_json())
    return True


def upgrade(repository: Path, models: Sequence[str] = ()) -> list[str]:
    """Upgrade every version of `models` (all models when empty); returns "name/version" of each changed."""
    changed = []
    for model in sorted(p for p in repository.iterdir() if p.is_dir() and not p.name.startswith(".")):
        if models and model.name not in models:
            continue
        for folder in sorted(p for p in model.iterdir() if p.name.isdigit() and (p / SPEC_FILE).exists()):
            if upgrade_version(repository, folder):
                changed.append(f"{model.name}/{folder.name}")
    return changed


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m models.upgrade", description=__doc__.splitlines()[0])
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("models", nargs="*", help="model names (default: every model)")
    args = parser.parse_args(argv)
    try:
        changed = upgrade(args.repository, args.models)
    except (ExportError, OSError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 1
    print("\n".join(f"upgraded {name}" for name in changed) or "nothing to upgrade")
    return 0


if __name__ == "__main__":
    sys.exit(main())
