"""Pydantic models at the service's edges (HTTP JSON bodies; the gRPC layer mirrors them)."""

from __future__ import annotations

from pydantic import BaseModel, Field

from service.model_spec import Interpolation, Normalization, TensorSpec, WeightsProvenance


class Prediction(BaseModel):
    class_id: int
    label: str
    score: float


class ImageResult(BaseModel):
    predictions: list[Prediction] = Field(description="top-k, highest score first")


class Timings(BaseModel):
    preprocess_ms: float = Field(description="decode and resize (wall time for all images)")
    queue_ms: float = Field(description="longest wait in the batcher queue")
    inference_ms: float = Field(description="longest ONNX Runtime batch run among this request's images")
    total_ms: float


class ClassifyResponse(BaseModel):
    model: str
    version: int
    weights: str = Field(description="imagenet, custom or random (random weights give meaningless labels)")
    results: list[ImageResult] = Field(description="one per image, in request order")
    timings: Timings


class BatcherInfo(BaseModel):
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    queue_depth: int


class VersionInfo(BaseModel):
    version: int
    state: str = Field(description="available, loading, ready, unloading, unloaded, failed or stopped")
    ready: bool
    reason: str | None = None
    memory_bytes: int | None = Field(default=None, description="resident memory taken at load")
    load_seconds: float | None = None
    loaded_at: float | None = Field(default=None, description="when it became ready (Unix time)")
    last_used: float | None = Field(default=None, description="last request it served (Unix time)")
    in_flight: int = Field(0, description="requests holding this version now")


class ModelInfo(BaseModel):
    name: str
    version: int | None = Field(description="the version a request without one gets (newest ready)")
    state: str = Field(description="available, loading, ready, unloading, unloaded, failed or stopped")
    ready: bool
    reason: str | None = Field(default=None, description="why the model is not ready")
    default: bool = False
    variant: str | None = None
    architecture: str | None = None
    resolution: int | None = Field(default=None, description="crop size: the graph's input height and width")
    resize_size: int | None = None
    interpolation: Interpolation | None = None
    normalization: Normalization | None = None
    num_classes: int | None = None
    parameters: int | None = None
    gmacs: float | None = None
    weights: WeightsProvenance | None = None
    inputs: list[TensorSpec] = Field(default_factory=list)
    outputs: list[TensorSpec] = Field(default_factory=list)
    opset: int | None = None
    provider: str | None = Field(default=None, description="ONNX Runtime execution provider actually in use")
    batcher: BatcherInfo | None = None
    versions: list[VersionInfo] = Field(default_factory=list, description="every known version")


class ModelList(BaseModel):
    default_model: str | None
    models: list[ModelInfo]


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="model -> state, with the reason when not ready")
