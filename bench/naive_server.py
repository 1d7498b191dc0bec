"""The naive reference: what a user writes in an afternoon. FastAPI, one ONNX Runtime session with
default options, Pillow with default settings (full-resolution decode), no batcher: every request is
decoded, resized and run on its own. The blocking work goes to Starlette's thread pool (a sync
handler would do the same), which is the friendlier of the two obvious ways to write it.

With EFFNET_NAIVE_DRAFT=1 it asks libjpeg to decode at a reduced scale (`Image.draft`) first: the one
line a user who profiled would add ("naive + draft").

Run: EFFNET_NAIVE_MODEL_DIR=models/repository/b0/1 uvicorn --factory bench.naive_server:create_app
"""

from __future__ import annotations

import io
import json
import os
from pathlib import Path

import numpy as np
import onnxruntime as ort
from fastapi import FastAPI, HTTPException, Request
from fastapi.concurrency import run_in_threadpool
from PIL import Image

_RESAMPLE = {
    "nearest": Image.Resampling.NEAREST,
    "bilinear": Image.Resampling.BILINEAR,
    "bicubic": Image.Resampling.BICUBIC,
}


def create_app() -> FastAPI:
    model_dir = Path(os.environ["EFFNET_NAIVE_MODEL_DIR"])
    spec = json.loads((model_dir / "model.json").read_text())
    labels = (model_dir / "labels.txt").read_text().splitlines()
    options = ort.SessionOptions()
    # Set only by a pinned bench run (bench/pinning.py): ORT's default pins one thread to each physical
    # core of the machine, whatever cores the process was given, so it would escape the pinning.
    if threads := os.environ.get("EFFNET_NAIVE_THREADS"):
        options.intra_op_num_threads = int(threads)
    session = ort.InferenceSession(str(model_dir / "model.onnx"), options, providers=["CPUExecutionProvider"])
    input_name = session.get_inputs()[0].name
    crop, resize = int(spec["crop_size"]), int(spec["resize_size"])
    resample = _RESAMPLE[spec["interpolation"]]
    draft = os.environ.get("EFFNET_NAIVE_DRAFT") == "1"

    def predict(data: bytes) -> list[dict[str, object]]:
        image = Image.open(io.BytesIO(data))
        if draft:
            image.draft("RGB", (resize, resize))
        image = image.convert("RGB")
        scale = resize / min(image.size)
        image = image.resize((round(image.width * scale), round(image.height * scale)), resample)
        left, top = (image.width - crop) // 2, (image.height - crop) // 2
        image = image.crop((left, top, left + crop, top + crop))
        pixels = np.asarray(image).transpose(2, 0, 1)[np.newaxis]
        probabilities = session.run(["probabilities"], {input_name: np.ascontiguousarray(pixels)})[0][0]
        best = np.argsort(probabilities)[::-1][:5]
        return [{"class_id": int(i), "label": labels[i], "score": float(probabilities[i])} for i in best]

    app = FastAPI()

    @app.post("/classify")
    async def classify(request: Request, variant: str | None = None) -> dict[str, object]:
        data = await request.body()
        try:
            predictions = await run_in_threadpool(predict, data)
        except Exception as exc:
            raise HTTPException(status_code=400, detail=str(exc)) from exc
        return {"predictions": predictions}

    @app.get("/healthz")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    return app
