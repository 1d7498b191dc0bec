"""Weights resolution: provenance, the one-time fallback warning, checkpoint diagnostics."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import models.weights as weights_module
from models.architectures import build_classifier
from models.errors import CheckpointError, ExportError, WeightsUnavailable
from models.variants import Variant, get_variant
from models.weights import WeightsResolver, load_into, read_checkpoint, sha256_file


@pytest.fixture
def offline(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Make torchvision's checkpoints unreachable, whatever this machine's network; count attempts."""
    attempts: list[str] = []

    def unreachable(variant: Variant) -> Path:
        attempts.append(variant.key)
        raise WeightsUnavailable("no network")

    monkeypatch.setattr(weights_module, "_torchvision_checkpoint", unreachable)
    return attempts


def test_default_falls_back_to_random_with_one_warning(offline: list[str]) -> None:
    warnings: list[str] = []
    resolver = WeightsResolver(seed=7, warn=warnings.append)
    chosen = [resolver.resolve("default", get_variant(key)) for key in ("b0", "b1", "b2")]
    assert all(w.provenance.kind == "random" and w.provenance.seed == 7 for w in chosen)
    assert len(warnings) == 1 and "RANDOM" in warnings[0]
    assert offline == ["b0"]  # known offline after the first try: no more probes


def test_imagenet_that_cannot_be_had_is_an_error(offline: list[str]) -> None:
    with pytest.raises(WeightsUnavailable):
        WeightsResolver().resolve("imagenet", get_variant("b0"))


def test_lite0_imagenet_weights_come_from_the_package_even_offline(offline: list[str]) -> None:
    weights = WeightsResolver().resolve("default", get_variant("lite0"))
    assert weights.provenance.kind == "imagenet"
    assert weights.provenance.source is not None and "efficientnet-lite0" in weights.provenance.source
    assert weights.state_dict is not None and weights.num_classes() == 1000
    assert offline == []


def test_custom_checkpoint_records_name_and_digest(tmp_path: Path) -> None:
    model = build_classifier(get_variant("b0"), num_classes=10)
    path = tmp_path / "finetuned.pt"
    torch.save({"state_dict": model.state_dict()}, path)  # nested, as training scripts save it
    weights = WeightsResolver().resolve(str(path), get_variant("b0"))
    assert weights.provenance.kind == "custom"
    assert weights.provenance.source == "finetuned.pt"
    assert weights.provenance.sha256 == sha256_file(path)
    assert weights.num_classes() == 10
    load_into(build_classifier(get_variant("b0"), num_classes=10), weights.state_dict or {}, "x")


def test_dataparallel_prefix_is_stripped(tmp_path: Path) -> None:
    model = build_classifier(get_variant("b0"))
    path = tmp_path / "ddp.pt"
    torch.save({f"module.{k}": v for k, v in model.state_dict().items()}, path)
    assert set(read_checkpoint(path)) == set(model.state_dict())


@pytest.mark.parametrize(
    ("content", "message"),
    [
        (b"definitely not a checkpoint", "cannot read checkpoint"),
        (None, "does not exist"),
    ],
)
def test_unreadable_checkpoint_is_one_clear_error(
    tmp_path: Path, content: bytes | None, message: str
) -> None:
    path = tmp_path / "broken.pt"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(CheckpointError, match=message):
        read_checkpoint(path)


def test_checkpoint_that_is_not_a_state_dict(tmp_path: Path) -> None:
    path = tmp_path / "list.pt"
    torch.save([1, 2, 3], path)
    with pytest.raises(CheckpointError, match="does not hold a state_dict"):
        read_checkpoint(path)


def test_mismatch_names_the_keys_and_shapes() -> None:
    state = build_classifier(get_variant("b0"), num_classes=10).state_dict()
    state.pop("features.0.0.weight")
    state["extra.weight"] = torch.zeros(1)
    with pytest.raises(CheckpointError) as caught:
        load_into(build_classifier(get_variant("b0")), state, "mine.pt")
    message = str(caught.value)
    assert "mine.pt" in message
    assert "1 missing keys: features.0.0.weight" in message
    assert "1 unexpected keys: extra.weight" in message
    assert "classifier.1.weight (10, 1280) vs (1000, 1280)" in message


def test_b1_checkpoint_does_not_fit_b0() -> None:
    with pytest.raises(CheckpointError, match="does not fit"):
        load_into(build_classifier(get_variant("b0")), build_classifier(get_variant("b1")).state_dict(), "b1")


def test_weights_argument_that_is_nothing_known(tmp_path: Path) -> None:
    with pytest.raises(ExportError, match="is not default, imagenet, random or an existing file"):
        WeightsResolver().resolve(str(tmp_path / "nope.pt"), get_variant("b0"))
