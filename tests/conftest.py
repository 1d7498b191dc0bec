"""Fixtures shared by every test directory. Keep each one cheap and session-scoped where it costs.

Heavy imports (torch, skimage) happen inside the fixtures so tests that do not use them stay fast.
"""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest

from tests.redis_process import RedisProcess

JPEG_QUALITY = 95
RANDOM_SEED = 0


def _jpeg(array: np.ndarray, size: tuple[int, int] | None = None) -> bytes:
    from PIL import Image

    image = Image.fromarray(array).convert("RGB")
    if size is not None:
        image = image.resize(size, Image.Resampling.BICUBIC)
    buffer = io.BytesIO()
    image.save(buffer, format="JPEG", quality=JPEG_QUALITY)
    return buffer.getvalue()


TEST_REPOSITORY_MODELS = ("b0", "lite0")


@pytest.fixture(scope="session")
def model_repository(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A model repository exported once per session: `b0` (random weights, seed 0; fit for shapes,
    speed and protocols, never labels) and `lite0` (real ImageNet weights), both at version 1.

    EFFNET_TEST_REPOSITORY=DIR uses DIR instead (read only; tests that change a repository copy
    from it): the device check exports it once, with a time limit, and pytest reuses it rather than
    exporting again (bench/gpu/run.sh). A DIR without b0/1 and lite0/1 fails the tests that ask."""
    given = os.environ.get("EFFNET_TEST_REPOSITORY")
    if given:
        repository = Path(given)
        missing = [m for m in TEST_REPOSITORY_MODELS if not (repository / m / "1" / "model.onnx").exists()]
        if missing:
            pytest.fail(f"EFFNET_TEST_REPOSITORY={given} has no {', '.join(missing)} at version 1")
        return repository
    pytest.importorskip("torch", reason="exporting models needs the 'export' extra")
    from models.export import export_variant

    repository = tmp_path_factory.mktemp("repository")
    export_variant("b0", repository, weights="random", seed=RANDOM_SEED)
    export_variant("lite0", repository, weights="imagenet")
    return repository


@pytest.fixture(scope="session")
def real_photos() -> dict[str, bytes]:
    """JPEG bytes of scikit-image's `chelsea` (a tabby cat, ImageNet 281-285) and `coffee`
    (espresso 967 / cup 968), Pillow quality 95."""
    from skimage import data

    return {"chelsea": _jpeg(data.chelsea()), "coffee": _jpeg(data.coffee())}


@pytest.fixture(scope="session")
def photo_1080p() -> bytes:
    """A real photo (scikit-image's `astronaut`) resized to 1920x1080, as JPEG bytes (quality 95)."""
    from skimage import data

    return _jpeg(data.astronaut(), size=(1920, 1080))


@pytest.fixture(scope="session")
def precision_repository(tmp_path_factory: pytest.TempPathFactory, model_repository: Path) -> Path:
    """A repository with `lite0` (a copy of the shared one) and the lower-precision models made from
    it: `lite0-fp16` and `lite0-int8`, each with its export-time agreement record. Separate from
    `model_repository` so that tests which do not need them do not pay for them (about 40 s here)."""
    import shutil

    from models.export import export_models

    repository = tmp_path_factory.mktemp("precision-repository")
    shutil.copytree(model_repository / "lite0", repository / "lite0")
    # lite0 is already there with the same weights: it is the reference, not exported again.
    export_models("lite0", repository, weights="imagenet", precisions="fp16,int8")
    return repository


def parse_classification(item: bytes | str) -> tuple[float, int, str]:
    """One element of a V2 classification output, "score:index:label" (the label may hold colons)."""
    text = item.decode() if isinstance(item, bytes) else item
    score, index, *label = text.split(":", 2)
    return float(score), int(index), label[0] if label else ""


@pytest.fixture
def redis_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[RedisProcess]:
    """A real redis-server on a free port for one test (tests/redis_process.py); killed at the end."""
    server = RedisProcess(tmp_path_factory.mktemp("redis")).start()
    yield server
    server.kill()
