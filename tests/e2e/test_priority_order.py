"""Priorities end to end: the bulk CLI's own transport (which sends low unless told otherwise) saturates a
real server (b0, one batch at a time) with hundreds of real-photo JPEGs while a page-like client (high,
as the page sends) asks one image at a time. Measured in order, not time: how many bulk images finished
while each page-like request waited. With priorities a page request passes the queue; without (both
normal) it waits behind it. The bulk job still finishes every image (low never starves)."""

from __future__ import annotations

import asyncio
import io
import statistics
import threading
from pathlib import Path

import httpx
import numpy as np
import pytest
from PIL import Image

from service.client.cli import BULK_PRIORITY, HttpTransport, Outcome, classify_all
from tests.e2e.conftest import LiveServer, ServerFactory
from tests.waiting import until_sync

pytestmark = pytest.mark.slow

BULK_IMAGES = 300
BULK_CONCURRENCY = 24
PAGE_REQUESTS = 12


@pytest.fixture(scope="module")
def photo_folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Crops of scikit-image's photos as small JPEGs (decoding stays cheap: the batcher is the queue)."""
    from skimage import data

    folder = tmp_path_factory.mktemp("bulk")
    sources = [data.astronaut(), data.chelsea(), data.coffee(), data.rocket()]
    rng = np.random.default_rng(0)
    for index in range(BULK_IMAGES):
        photo = sources[index % len(sources)]
        top = int(rng.integers(0, photo.shape[0] - 120))
        left = int(rng.integers(0, photo.shape[1] - 160))
        buffer = io.BytesIO()
        Image.fromarray(photo[top : top + 120, left : left + 160]).save(buffer, format="JPEG", quality=90)
        (folder / f"{index:04d}.jpg").write_bytes(buffer.getvalue())
    return folder


@pytest.fixture(scope="module")
def busy_server(server_factory: ServerFactory, model_repository: Path) -> LiveServer:
    return server_factory(
        model_repository, "--models", "b0", "--max-batch-size", "1", "--intra-op-threads", "1",
        # Aging well above the queue's wait on a slow machine: this test is about the level order.
        env={"EFFNET_INSTANCES": "1", "EFFNET_MAX_QUEUE_SIZE": "64", "EFFNET_PRIORITY_AGING_MS": "10000"},
    )  # fmt: skip


def overtaken(
    server: LiveServer, folder: Path, bulk_priority: str, page_priority: str, page_image: bytes
) -> tuple[list[int], list[Outcome]]:
    """Run the bulk job in a thread; per page request, the bulk images finished while it waited."""
    finished = 0
    lock = threading.Lock()
    outcomes: list[Outcome] = []

    def done(outcome: Outcome) -> None:
        nonlocal finished
        with lock:
            finished += 1

    def bulk() -> None:
        images = sorted(folder.glob("*.jpg"))

        def connect() -> HttpTransport:
            return HttpTransport(server.http_url, "b0", 1, 120.0, {}, bulk_priority)

        outcomes.extend(asyncio.run(classify_all(connect, images, BULK_CONCURRENCY, done)))

    worker = threading.Thread(target=bulk)
    worker.start()
    counts: list[int] = []
    try:
        until_sync(lambda: finished >= 2 * BULK_CONCURRENCY, within_s=120, what="the bulk job under way")
        with httpx.Client(timeout=60) as page:
            for _ in range(PAGE_REQUESTS):
                if finished > BULK_IMAGES - 2 * BULK_CONCURRENCY:
                    break  # the queue is draining: no longer a saturated server
                before = finished
                answer = page.post(
                    f"{server.http_url}/classify",
                    params={"variant": "b0", "top_k": 1, "priority": page_priority},
                    content=page_image,
                    headers={"content-type": "image/jpeg"},
                )
                assert answer.status_code == 200, answer.text
                counts.append(finished - before)
    finally:
        worker.join(300)
    return counts, outcomes


def test_page_requests_pass_a_saturating_bulk_job(
    busy_server: LiveServer, photo_folder: Path, real_photos: dict[str, bytes]
) -> None:
    assert BULK_PRIORITY == "low"
    page_image = real_photos["coffee"]
    with_priorities, bulk_outcomes = overtaken(busy_server, photo_folder, BULK_PRIORITY, "high", page_image)
    without, _ = overtaken(busy_server, photo_folder, "normal", "normal", page_image)
    print(f"bulk images finished while a page request waited: with {with_priorities}, without {without}")
    assert len(with_priorities) >= 5 and len(without) >= 5
    assert all(outcome.ok for outcome in bulk_outcomes) and len(bulk_outcomes) == BULK_IMAGES
    # One batch runs at a time: a high request waits for the batch running when it arrived (and one
    # that started while it was being decoded), never for the queue of two dozen low images.
    assert statistics.median(with_priorities) <= 3
    assert statistics.median(without) > statistics.median(with_priorities)

    metrics = httpx.get(f"{busy_server.http_url}/metrics").text
    for level in ("high", "normal", "low"):
        assert f'effnet_queue_depth_by_priority{{model="b0",priority="{level}"}}' in metrics


def test_a_bad_priority_is_a_422_naming_the_levels(
    busy_server: LiveServer, real_photos: dict[str, bytes]
) -> None:
    answer = httpx.post(
        f"{busy_server.http_url}/classify",
        params={"variant": "b0", "priority": "urgent"},
        content=real_photos["coffee"],
        headers={"content-type": "image/jpeg"},
        timeout=60,
    )
    assert answer.status_code == 422  # as every invalid option
    assert "high, normal, low" in answer.json()["error"]["message"]
    header = httpx.post(
        f"{busy_server.http_url}/classify",
        params={"variant": "b0"},
        content=real_photos["coffee"],
        headers={"content-type": "image/jpeg", "x-priority": "low"},
        timeout=60,
    )
    assert header.status_code == 200
