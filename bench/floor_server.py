"""The overhead floor: the least a Python HTTP server adds to the essential work on this machine.

FastAPI and uvicorn as our service uses them, and one worker thread per core. Each worker takes the
next request, decodes its image with the service's own preprocessing and runs it on one shared
one-thread ONNX Runtime session, one image per run (the cheapest per image on a CPU core, as in the
service: bench/README.md), so decoding and inference never compete for a core and no image passes
between threads. It checks nothing, limits nothing and measures nothing: no
validation, no queue bound, no deadlines, no metrics, no cache. What it reaches at 16 clients is what
HTTP transport, the event loop and the load generator leave of the pipeline limit; the distance from
it to our service is what our service's own features cost (bench/README.md).

Run: EFFNET_FLOOR_MODEL_DIR=models/repository/b0/1 uvicorn --factory bench.floor_server:create_app
"""

from __future__ import annotations

import asyncio
import os
import queue
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, Request

from service.model_spec import LABELS_FILE, MODEL_FILE, ModelSpec, read_labels
from service.preprocess.images import DecodeLimits, PreprocessSpec, configure_pillow, preprocess
from service.settings import cpu_count


@dataclass
class _Job:
    data: bytes
    loop: asyncio.AbstractEventLoop
    future: asyncio.Future[np.ndarray]


def _one_thread_session(path: Path) -> ort.InferenceSession:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    return ort.InferenceSession(str(path), sess_options=options, providers=["CPUExecutionProvider"])


def _answer(job: _Job, result: np.ndarray | BaseException) -> None:
    """On the loop: the future may be gone if the client disconnected."""
    if job.future.done():
        return
    if isinstance(result, BaseException):
        job.future.set_exception(result)
    else:
        job.future.set_result(result)


def _work(jobs: queue.SimpleQueue[_Job], session: ort.InferenceSession, spec: PreprocessSpec) -> None:
    limits = DecodeLimits()
    input_name = session.get_inputs()[0].name
    while True:
        job = jobs.get()
        try:
            row = preprocess(job.data, spec, limits)
            (probabilities,) = session.run(["probabilities"], {input_name: row[np.newaxis]})
        except Exception as exc:
            job.loop.call_soon_threadsafe(_answer, job, exc)
            continue
        job.loop.call_soon_threadsafe(_answer, job, probabilities[0])


def create_app() -> FastAPI:
    model_dir = Path(os.environ["EFFNET_FLOOR_MODEL_DIR"])
    spec = ModelSpec.from_file(model_dir / "model.json")
    labels = read_labels(model_dir / LABELS_FILE, spec.num_classes)
    preprocess_spec = PreprocessSpec.from_model_spec(spec)
    configure_pillow()
    session = _one_thread_session(model_dir / MODEL_FILE)  # ORT runs one session from several threads
    jobs: queue.SimpleQueue[_Job] = queue.SimpleQueue()
    for index in range(cpu_count()):  # the cores the service would count
        threading.Thread(
            target=_work, args=(jobs, session, preprocess_spec), name=f"floor-{index}", daemon=True
        ).start()

    app = FastAPI()

    @app.post("/classify")
    async def classify(request: Request, variant: str | None = None) -> dict[str, object]:
        loop = asyncio.get_running_loop()
        job = _Job(await request.body(), loop, loop.create_future())
        jobs.put(job)
        probabilities = await job.future
        best = np.argsort(probabilities)[::-1][:5]
        return {"predictions": [{"label": labels[i], "score": float(probabilities[i])} for i in best]}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
