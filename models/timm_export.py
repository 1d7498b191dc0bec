"""timm checkpoints -> `Source`: the architecture from timm, the weights from the user's training run,
the eval preprocessing from timm's pretrained config for that architecture.

    python -m models.export --from timm --arch tf_efficientnet_b3 --weights ckpt.pth --labels classes.txt

Checkpoints are read in the forms timm's `train.py` and people's own scripts write: a bare state_dict,
`{"state_dict": ...}` (timm's CheckpointSaver, with `args`, `optimizer`, `state_dict_ema` beside it),
`{"model": ...}`, a `.safetensors` file; `module.` prefixes (DataParallel/DDP) are dropped. The EMA
weights are used only when asked for (`ema=True`), as timm's own validate.py does with `--use-ema`.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from models.accuracy import stated_accuracy
from models.architectures import Preprocessing, parameter_count
from models.errors import CheckpointError, ExportError
from models.labels import FolderOrder, check_count, read_labels
from models.sources import Source, TorchGraphs, torch_exporter_versions
from models.weights import DEFAULT_SEED, open_checkpoint, sha256_file
from service.model_spec import Precision, WeightsProvenance

# The EfficientNet families timm builds: B0-B8/L2 and their TF ports ('same' padding), Lite, V2 (timm's
# own and the TF ports), and timm's EfficientNet-shaped relatives (MixNet, MobileNet, ... are left out).
FAMILY_PATTERNS = ("*efficientnet*",)
_NESTED = ("state_dict", "model_state_dict", "model")
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")


@dataclass(frozen=True)
class Overrides:
    """Preprocessing the user sets instead of timm's pretrained config (None: keep timm's)."""

    input_size: int | None = None
    crop_pct: float | None = None
    resize: int | None = None
    interpolation: str | None = None
    mean: tuple[float, float, float] | None = None
    std: tuple[float, float, float] | None = None


def architectures() -> list[str]:
    import timm

    names: set[str] = set()
    for pattern in FAMILY_PATTERNS:
        names.update(timm.list_models(pattern))
    return sorted(names)


def check_architecture(arch: str) -> str:
    """`arch` (optionally `arch.pretrained_tag`, whose config then sets the preprocessing) if timm builds
    it and it is an EfficientNet; otherwise one line naming the closest names."""
    known = architectures()
    base = arch.split(".", 1)[0]
    if base in known:
        return arch
    import timm

    close = difflib.get_close_matches(base, known, n=4, cutoff=0.6)
    hint = f"closest: {', '.join(close)}" if close else f"for example {', '.join(known[:4])}"
    other = " (timm builds it, but it is not an EfficientNet)" if base in timm.list_models() else ""
    raise ExportError(f"unknown timm EfficientNet architecture {arch!r}{other}; {hint}")


def _load_file(path: Path) -> Any:
    if path.suffix == ".safetensors":
        from safetensors.torch import load_file

        return load_file(str(path))
    # timm's CheckpointSaver stores its argparse.Namespace under `args`: allow that one class, nothing else.
    with torch.serialization.safe_globals([argparse.Namespace]):
        return torch.load(path, map_location="cpu", weights_only=True)


def read_timm_checkpoint(path: Path, *, ema: bool = False) -> tuple[dict[str, torch.Tensor], str | None]:
    """(state_dict, the architecture the checkpoint names under `arch`, if it does)."""
    loaded = open_checkpoint(path, _load_file)
    named = None
    if isinstance(loaded, Mapping):
        arch = loaded.get("arch")
        named = arch if isinstance(arch, str) else None
        if ema:
            if not isinstance(loaded.get("state_dict_ema"), Mapping):
                keys = ", ".join(sorted(str(k) for k in loaded)[:8])
                raise CheckpointError(f"checkpoint {path} has no state_dict_ema (its keys: {keys})")
            loaded = loaded["state_dict_ema"]
        else:
            for key in _NESTED:
                if isinstance(loaded.get(key), Mapping):
                    loaded = loaded[key]
                    break
    if (
        not isinstance(loaded, Mapping)
        or not loaded
        or not all(isinstance(v, torch.Tensor) for v in loaded.values())
    ):
        raise CheckpointError(f"checkpoint {path} does not hold a state_dict (a mapping of name -> tensor)")
    state = {str(k).removeprefix("module."): v for k, v in loaded.items()}
    return state, named


def _num_classes(state: Mapping[str, torch.Tensor], classifier: str, path: Path, arch: str) -> int:
    weight = state.get(f"{classifier}.weight")
    if weight is None or weight.dim() != 2:
        raise CheckpointError(
            f"checkpoint {path} has no {classifier}.weight, so it is not a {arch} checkpoint "
            f"(its first keys: {', '.join(list(state)[:4])})"
        )
    return int(weight.shape[0])


def eval_preprocessing(model: nn.Module, overrides: Overrides) -> Preprocessing:
    """timm's eval transform for `model` (resolve_data_config + create_transform), read back as our
    resize-shorter-side + centre-crop; anything else timm might do is refused rather than approximated."""
    from timm.data import create_transform, resolve_data_config
    from torchvision import transforms

    args: dict[str, object] = {}
    if overrides.input_size is not None:
        args["input_size"] = (3, overrides.input_size, overrides.input_size)
    for key in ("crop_pct", "interpolation", "mean", "std"):
        if getattr(overrides, key) is not None:
            args[key] = getattr(overrides, key)
    config = resolve_data_config(args, model=model)
    _, height, width = config["input_size"]
    if height != width:
        raise ExportError(
            f"timm's input size for this model is {height}x{width}; only square crops are served"
        )
    if config["interpolation"] not in INTERPOLATIONS:
        raise ExportError(
            f"interpolation {config['interpolation']!r}: choose from {', '.join(INTERPOLATIONS)}"
        )
    steps = create_transform(**config, is_training=False).transforms
    resize = next((s for s in steps if isinstance(s, transforms.Resize)), None)
    crop = next((s for s in steps if isinstance(s, transforms.CenterCrop)), None)
    if resize is None or crop is None or not isinstance(resize.size, int | list | tuple):
        raise ExportError(f"timm's eval transform is not resize + centre crop: {steps}")
    size = resize.size if isinstance(resize.size, int) else resize.size[0]
    if not isinstance(resize.size, int) and len(resize.size) == 2 and resize.size[0] != resize.size[1]:
        raise ExportError(
            f"timm's eval transform squashes to {resize.size}; only aspect-keeping resizes served"
        )
    resize_size = overrides.resize if overrides.resize is not None else int(size)
    crop_size = int(crop.size[0])
    if resize_size < crop_size:
        raise ExportError(f"resize {resize_size} is smaller than the crop {crop_size}")
    mean = tuple(float(m) for m in config["mean"])
    std = tuple(float(s) for s in config["std"])
    return Preprocessing(crop_size, resize_size, str(config["interpolation"]), mean, std)  # type: ignore[arg-type]


def timm_source(
    arch: str,
    weights: str,
    *,
    labels: Path | None = None,
    num_classes: int | None = None,
    ema: bool = False,
    seed: int = DEFAULT_SEED,
    overrides: Overrides = Overrides(),  # noqa: B008 (frozen)
    accuracy: float | None = None,
    folder_order: FolderOrder = "natural",
) -> Source:
    """Read, build, load and describe; nothing is written. `weights` is a checkpoint path or "random"."""
    import timm

    arch = check_architecture(arch)
    label_list = read_labels(labels, folder_order=folder_order) if labels is not None else None
    if weights == "random":
        classes = num_classes or (len(label_list) if label_list else None)
        if classes is None:
            raise ExportError("--weights random needs --labels or --num-classes")
        provenance = WeightsProvenance(kind="random", seed=seed)
        state: dict[str, torch.Tensor] | None = None
    else:
        path = Path(weights)
        state, named = read_timm_checkpoint(path, ema=ema)
        if named is not None and named.split(".", 1)[0] != arch.split(".", 1)[0]:
            raise CheckpointError(f"checkpoint {path.name} was trained as {named!r}, not {arch!r}")
        from timm.models import get_pretrained_cfg_value

        classifier_key = get_pretrained_cfg_value(arch, "classifier") or "classifier"
        classes = _num_classes(state, classifier_key, path, arch)
        if num_classes is not None and num_classes != classes:
            raise ExportError(f"--num-classes {num_classes} but the checkpoint has {classes} classes")
        provenance = WeightsProvenance(kind="custom", source=path.name, sha256=sha256_file(path))
    if label_list is None:
        raise ExportError(
            f"a timm model needs --labels (a file or a folder of class folders; {classes} classes)"
        )
    check_count(label_list, classes, labels or "--labels")
    torch.manual_seed(seed)
    model = timm.create_model(arch, pretrained=False, num_classes=classes, exportable=True).eval()
    if state is not None:
        from models.weights import load_into

        load_into(model, state, provenance.source or weights)
    pre = eval_preprocessing(model, overrides)
    graphs = TorchGraphs(model, pre)
    exporter = torch_exporter_versions(["timm"])

    def declared(precision: Precision) -> Any:
        return stated_accuracy(accuracy, precision)

    return Source(
        key=f"timm:{arch}",
        architecture=f"timm.create_model({arch!r}, exportable=True)",
        pre=pre,
        classes=classes,
        labels=label_list,
        weights=provenance,
        parameters=parameter_count(model),
        gmacs=graphs.gmacs,
        exporter=exporter,
        graphs=graphs,
        accuracy=declared,
    )
