"""Pydantic models at the service's edges (HTTP JSON bodies; the gRPC layer mirrors them)."""

from __future__ import annotations

from pydantic import BaseModel, Field, SerializerFunctionWrapHandler, model_serializer

from service.model_spec import (
    Agreement,
    DeclaredAccuracy,
    Interpolation,
    MeasuredAccuracy,
    Normalization,
    TensorSpec,
    WeightsProvenance,
)


class Prediction(BaseModel):
    class_id: int
    label: str
    score: float
    cam: list[list[float]] | None = Field(
        default=None,
        description="explain=true: the class activation map of this class, rows of the last feature map's "
        "grid (sum over channels of the class's weight times the feature map; its mean plus the bias is "
        "the logit). Left out when not asked for.",
    )

    @model_serializer(mode="wrap")
    def _without_absent_map(self, handler: SerializerFunctionWrapHandler) -> dict[str, object]:
        data: dict[str, object] = handler(self)
        if data.get("cam", 0) is None:
            del data["cam"]
        return data


class ImageResult(BaseModel):
    predictions: list[Prediction] = Field(description="top-k, highest score first")
    cached: bool = Field(False, description="answered from the response cache (not decoded, not run)")


class Timings(BaseModel):
    preprocess_ms: float = Field(
        description="decode and resize: on CPU models the sum over the images (each is decoded by the "
        "thread that runs its batch); on CUDA models the wall time of the preprocessing pool for all images"
    )
    queue_ms: float = Field(description="longest wait in the batcher queue")
    inference_ms: float = Field(description="longest ONNX Runtime batch run among this request's images")
    total_ms: float


class StageConfidence(BaseModel):
    model: str
    confidence: float = Field(description="the stage's top probability for this image")
    escalated: bool = Field(description="below the stage's exit_confidence: passed to the next stage")


class CascadeImage(BaseModel):
    answered_by: str
    stages: list[StageConfidence]


class Route(BaseModel):
    """How `auto` or a cascade served the request."""

    policy: str = Field(description="auto or cascade")
    budget_ms: float | None = Field(default=None, description="auto: the latency budget")
    predicted_ms: float | None = Field(default=None, description="auto: the chosen model's predicted latency")
    model: str | None = Field(default=None, description="auto: the model chosen")
    fits: bool | None = Field(default=None, description="auto: false when no model was predicted to fit")
    images: list[CascadeImage] | None = Field(default=None, description="cascade: per image, in order")


class ClassifyResponse(BaseModel):
    model: str
    version: int
    weights: str = Field(
        description="imagenet, custom, imported or random (random weights give meaningless labels)"
    )
    results: list[ImageResult] = Field(description="one per image, in request order")
    timings: Timings
    route: Route | None = Field(default=None, description="for auto and cascades: how the request was served")
    cached: bool = Field(False, description="every image was answered from the response cache")


class EmbedResult(BaseModel):
    vector: list[float] = Field(description="the pooled features before the classifier")


class EmbedResponse(BaseModel):
    model: str = Field(description="the model that answered (for auto and cascades: the one chosen)")
    version: int
    dimension: int
    normalized: bool
    results: list[EmbedResult] = Field(description="one per image, in request order")
    timings: Timings
    route: Route | None = None


class BatcherInfo(BaseModel):
    max_batch_size: int
    instances: int = Field(description="batches of this version that may run at once")
    overlap_run_size: int | None = Field(
        default=None,
        description="CPU: images per run when a batch overlaps another on the one-thread session "
        "(EFFNET_OVERLAP_RUN_SIZE); null where there is no such session or it runs whole batches",
    )
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
    recorded_as: str | None = Field(
        default=None,
        description="name/version as model.json records it, when that differs from its folder (a copied "
        "version or model): shown, never a failure; the folder decides",
    )


class StageInfo(BaseModel):
    """One stage of a cascade, as its cascade.json states it."""

    model: str
    exit_confidence: float | None = Field(None, description="answers here at or above this top probability")


class ModelInfo(BaseModel):
    name: str
    kind: str = Field("model", description="model, or cascade (stages run in order; see `stages`)")
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
    precision: str | None = Field(default=None, description="fp32, fp16 or int8")
    accuracy: DeclaredAccuracy | None = Field(default=None, description="published ImageNet top-1, if any")
    measured: MeasuredAccuracy | None = Field(
        default=None, description="top-1/top-5 measured on the operator's labelled photos; auto prefers it"
    )
    agreement: Agreement | None = Field(default=None, description="fp16/int8: agreement with its fp32 source")
    stages: list[StageInfo] = Field(default_factory=list, description="cascade: its stages in order")
    description: str | None = Field(
        default=None, description="cascade: what its cascade.json says (how it was tuned, a stage swapped)"
    )
    provider: str | None = Field(default=None, description="ONNX Runtime execution provider actually in use")
    batcher: BatcherInfo | None = None
    versions: list[VersionInfo] = Field(default_factory=list, description="every known version")


class ModelLabels(BaseModel):
    model: str
    version: int
    labels: list[str] = Field(description="class names, by class index")


class ModelList(BaseModel):
    default_model: str | None
    models: list[ModelInfo]
    policies: list[str] = Field(default_factory=list, description="routing names besides models: auto")


class ErrorBody(BaseModel):
    code: str
    message: str


class ErrorResponse(BaseModel):
    error: ErrorBody


class Readiness(BaseModel):
    ready: bool
    models: dict[str, str] = Field(description="model -> state, with the reason when not ready")
