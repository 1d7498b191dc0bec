from google.protobuf.internal import containers as _containers
from google.protobuf import descriptor as _descriptor
from google.protobuf import message as _message
from collections.abc import Iterable as _Iterable, Mapping as _Mapping
from typing import ClassVar as _ClassVar, Optional as _Optional, Union as _Union

DESCRIPTOR: _descriptor.FileDescriptor

class ClassifyRequest(_message.Message):
    __slots__ = ("model", "top_k", "images", "id", "version", "budget_ms", "explain", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    TOP_K_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    EXPLAIN_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    top_k: int
    images: _containers.RepeatedScalarFieldContainer[bytes]
    id: str
    version: int
    budget_ms: float
    explain: bool
    priority: str
    def __init__(self, model: _Optional[str] = ..., top_k: _Optional[int] = ..., images: _Optional[_Iterable[bytes]] = ..., id: _Optional[str] = ..., version: _Optional[int] = ..., budget_ms: _Optional[float] = ..., explain: _Optional[bool] = ..., priority: _Optional[str] = ...) -> None: ...

class Prediction(_message.Message):
    __slots__ = ("class_id", "label", "score", "cam")
    CLASS_ID_FIELD_NUMBER: _ClassVar[int]
    LABEL_FIELD_NUMBER: _ClassVar[int]
    SCORE_FIELD_NUMBER: _ClassVar[int]
    CAM_FIELD_NUMBER: _ClassVar[int]
    class_id: int
    label: str
    score: float
    cam: ActivationMap
    def __init__(self, class_id: _Optional[int] = ..., label: _Optional[str] = ..., score: _Optional[float] = ..., cam: _Optional[_Union[ActivationMap, _Mapping]] = ...) -> None: ...

class ImageResult(_message.Message):
    __slots__ = ("predictions", "cached")
    PREDICTIONS_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    predictions: _containers.RepeatedCompositeFieldContainer[Prediction]
    cached: bool
    def __init__(self, predictions: _Optional[_Iterable[_Union[Prediction, _Mapping]]] = ..., cached: _Optional[bool] = ...) -> None: ...

class Timings(_message.Message):
    __slots__ = ("preprocess_ms", "queue_ms", "inference_ms", "total_ms")
    PREPROCESS_MS_FIELD_NUMBER: _ClassVar[int]
    QUEUE_MS_FIELD_NUMBER: _ClassVar[int]
    INFERENCE_MS_FIELD_NUMBER: _ClassVar[int]
    TOTAL_MS_FIELD_NUMBER: _ClassVar[int]
    preprocess_ms: float
    queue_ms: float
    inference_ms: float
    total_ms: float
    def __init__(self, preprocess_ms: _Optional[float] = ..., queue_ms: _Optional[float] = ..., inference_ms: _Optional[float] = ..., total_ms: _Optional[float] = ...) -> None: ...

class Error(_message.Message):
    __slots__ = ("status", "code", "message", "retry_after_s")
    STATUS_FIELD_NUMBER: _ClassVar[int]
    CODE_FIELD_NUMBER: _ClassVar[int]
    MESSAGE_FIELD_NUMBER: _ClassVar[int]
    RETRY_AFTER_S_FIELD_NUMBER: _ClassVar[int]
    status: int
    code: str
    message: str
    retry_after_s: float
    def __init__(self, status: _Optional[int] = ..., code: _Optional[str] = ..., message: _Optional[str] = ..., retry_after_s: _Optional[float] = ...) -> None: ...

class ClassifyResponse(_message.Message):
    __slots__ = ("id", "model", "version", "weights", "results", "timings", "error", "route", "cached")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    RESULTS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ERROR_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    CACHED_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    version: int
    weights: str
    results: _containers.RepeatedCompositeFieldContainer[ImageResult]
    timings: Timings
    error: Error
    route: Route
    cached: bool
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., weights: _Optional[str] = ..., results: _Optional[_Iterable[_Union[ImageResult, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., error: _Optional[_Union[Error, _Mapping]] = ..., route: _Optional[_Union[Route, _Mapping]] = ..., cached: _Optional[bool] = ...) -> None: ...

class StageConfidence(_message.Message):
    __slots__ = ("model", "confidence", "escalated")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    CONFIDENCE_FIELD_NUMBER: _ClassVar[int]
    ESCALATED_FIELD_NUMBER: _ClassVar[int]
    model: str
    confidence: float
    escalated: bool
    def __init__(self, model: _Optional[str] = ..., confidence: _Optional[float] = ..., escalated: _Optional[bool] = ...) -> None: ...

class CascadeImage(_message.Message):
    __slots__ = ("answered_by", "stages")
    ANSWERED_BY_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    answered_by: str
    stages: _containers.RepeatedCompositeFieldContainer[StageConfidence]
    def __init__(self, answered_by: _Optional[str] = ..., stages: _Optional[_Iterable[_Union[StageConfidence, _Mapping]]] = ...) -> None: ...

class Route(_message.Message):
    __slots__ = ("policy", "budget_ms", "predicted_ms", "model", "fits", "images")
    POLICY_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    PREDICTED_MS_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    FITS_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    policy: str
    budget_ms: float
    predicted_ms: float
    model: str
    fits: bool
    images: _containers.RepeatedCompositeFieldContainer[CascadeImage]
    def __init__(self, policy: _Optional[str] = ..., budget_ms: _Optional[float] = ..., predicted_ms: _Optional[float] = ..., model: _Optional[str] = ..., fits: _Optional[bool] = ..., images: _Optional[_Iterable[_Union[CascadeImage, _Mapping]]] = ...) -> None: ...

class ListModelsRequest(_message.Message):
    __slots__ = ()
    def __init__(self) -> None: ...

class TensorSpec(_message.Message):
    __slots__ = ("name", "dtype", "shape")
    NAME_FIELD_NUMBER: _ClassVar[int]
    DTYPE_FIELD_NUMBER: _ClassVar[int]
    SHAPE_FIELD_NUMBER: _ClassVar[int]
    name: str
    dtype: str
    shape: _containers.RepeatedScalarFieldContainer[int]
    def __init__(self, name: _Optional[str] = ..., dtype: _Optional[str] = ..., shape: _Optional[_Iterable[int]] = ...) -> None: ...

class Weights(_message.Message):
    __slots__ = ("kind", "source", "sha256", "seed")
    KIND_FIELD_NUMBER: _ClassVar[int]
    SOURCE_FIELD_NUMBER: _ClassVar[int]
    SHA256_FIELD_NUMBER: _ClassVar[int]
    SEED_FIELD_NUMBER: _ClassVar[int]
    kind: str
    source: str
    sha256: str
    seed: int
    def __init__(self, kind: _Optional[str] = ..., source: _Optional[str] = ..., sha256: _Optional[str] = ..., seed: _Optional[int] = ...) -> None: ...

class BatcherInfo(_message.Message):
    __slots__ = ("max_batch_size", "max_queue_delay_ms", "max_queue_size", "queue_depth", "instances", "overlap_run_size")
    MAX_BATCH_SIZE_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_DELAY_MS_FIELD_NUMBER: _ClassVar[int]
    MAX_QUEUE_SIZE_FIELD_NUMBER: _ClassVar[int]
    QUEUE_DEPTH_FIELD_NUMBER: _ClassVar[int]
    INSTANCES_FIELD_NUMBER: _ClassVar[int]
    OVERLAP_RUN_SIZE_FIELD_NUMBER: _ClassVar[int]
    max_batch_size: int
    max_queue_delay_ms: float
    max_queue_size: int
    queue_depth: int
    instances: int
    overlap_run_size: int
    def __init__(self, max_batch_size: _Optional[int] = ..., max_queue_delay_ms: _Optional[float] = ..., max_queue_size: _Optional[int] = ..., queue_depth: _Optional[int] = ..., instances: _Optional[int] = ..., overlap_run_size: _Optional[int] = ...) -> None: ...

class ModelInfo(_message.Message):
    __slots__ = ("name", "version", "state", "ready", "reason", "default", "variant", "architecture", "resolution", "resize_size", "interpolation", "mean", "std", "num_classes", "parameters", "gmacs", "weights", "inputs", "outputs", "opset", "provider", "batcher", "versions", "kind", "precision", "accuracy_top1", "accuracy_source", "stages", "measured_dataset", "measured_images", "measured_top1", "measured_top5")
    NAME_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    DEFAULT_FIELD_NUMBER: _ClassVar[int]
    VARIANT_FIELD_NUMBER: _ClassVar[int]
    ARCHITECTURE_FIELD_NUMBER: _ClassVar[int]
    RESOLUTION_FIELD_NUMBER: _ClassVar[int]
    RESIZE_SIZE_FIELD_NUMBER: _ClassVar[int]
    INTERPOLATION_FIELD_NUMBER: _ClassVar[int]
    MEAN_FIELD_NUMBER: _ClassVar[int]
    STD_FIELD_NUMBER: _ClassVar[int]
    NUM_CLASSES_FIELD_NUMBER: _ClassVar[int]
    PARAMETERS_FIELD_NUMBER: _ClassVar[int]
    GMACS_FIELD_NUMBER: _ClassVar[int]
    WEIGHTS_FIELD_NUMBER: _ClassVar[int]
    INPUTS_FIELD_NUMBER: _ClassVar[int]
    OUTPUTS_FIELD_NUMBER: _ClassVar[int]
    OPSET_FIELD_NUMBER: _ClassVar[int]
    PROVIDER_FIELD_NUMBER: _ClassVar[int]
    BATCHER_FIELD_NUMBER: _ClassVar[int]
    VERSIONS_FIELD_NUMBER: _ClassVar[int]
    KIND_FIELD_NUMBER: _ClassVar[int]
    PRECISION_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_TOP1_FIELD_NUMBER: _ClassVar[int]
    ACCURACY_SOURCE_FIELD_NUMBER: _ClassVar[int]
    STAGES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_DATASET_FIELD_NUMBER: _ClassVar[int]
    MEASURED_IMAGES_FIELD_NUMBER: _ClassVar[int]
    MEASURED_TOP1_FIELD_NUMBER: _ClassVar[int]
    MEASURED_TOP5_FIELD_NUMBER: _ClassVar[int]
    name: str
    version: int
    state: str
    ready: bool
    reason: str
    default: bool
    variant: str
    architecture: str
    resolution: int
    resize_size: int
    interpolation: str
    mean: _containers.RepeatedScalarFieldContainer[float]
    std: _containers.RepeatedScalarFieldContainer[float]
    num_classes: int
    parameters: int
    gmacs: float
    weights: Weights
    inputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    outputs: _containers.RepeatedCompositeFieldContainer[TensorSpec]
    opset: int
    provider: str
    batcher: BatcherInfo
    versions: _containers.RepeatedCompositeFieldContainer[VersionInfo]
    kind: str
    precision: str
    accuracy_top1: float
    accuracy_source: str
    stages: _containers.RepeatedScalarFieldContainer[str]
    measured_dataset: str
    measured_images: int
    measured_top1: float
    measured_top5: float
    def __init__(self, name: _Optional[str] = ..., version: _Optional[int] = ..., state: _Optional[str] = ..., ready: _Optional[bool] = ..., reason: _Optional[str] = ..., default: _Optional[bool] = ..., variant: _Optional[str] = ..., architecture: _Optional[str] = ..., resolution: _Optional[int] = ..., resize_size: _Optional[int] = ..., interpolation: _Optional[str] = ..., mean: _Optional[_Iterable[float]] = ..., std: _Optional[_Iterable[float]] = ..., num_classes: _Optional[int] = ..., parameters: _Optional[int] = ..., gmacs: _Optional[float] = ..., weights: _Optional[_Union[Weights, _Mapping]] = ..., inputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., outputs: _Optional[_Iterable[_Union[TensorSpec, _Mapping]]] = ..., opset: _Optional[int] = ..., provider: _Optional[str] = ..., batcher: _Optional[_Union[BatcherInfo, _Mapping]] = ..., versions: _Optional[_Iterable[_Union[VersionInfo, _Mapping]]] = ..., kind: _Optional[str] = ..., precision: _Optional[str] = ..., accuracy_top1: _Optional[float] = ..., accuracy_source: _Optional[str] = ..., stages: _Optional[_Iterable[str]] = ..., measured_dataset: _Optional[str] = ..., measured_images: _Optional[int] = ..., measured_top1: _Optional[float] = ..., measured_top5: _Optional[float] = ...) -> None: ...

class VersionInfo(_message.Message):
    __slots__ = ("version", "state", "ready", "reason", "memory_bytes", "load_seconds", "loaded_at", "last_used", "in_flight", "recorded_as")
    VERSION_FIELD_NUMBER: _ClassVar[int]
    STATE_FIELD_NUMBER: _ClassVar[int]
    READY_FIELD_NUMBER: _ClassVar[int]
    REASON_FIELD_NUMBER: _ClassVar[int]
    MEMORY_BYTES_FIELD_NUMBER: _ClassVar[int]
    LOAD_SECONDS_FIELD_NUMBER: _ClassVar[int]
    LOADED_AT_FIELD_NUMBER: _ClassVar[int]
    LAST_USED_FIELD_NUMBER: _ClassVar[int]
    IN_FLIGHT_FIELD_NUMBER: _ClassVar[int]
    RECORDED_AS_FIELD_NUMBER: _ClassVar[int]
    version: int
    state: str
    ready: bool
    reason: str
    memory_bytes: int
    load_seconds: float
    loaded_at: float
    last_used: float
    in_flight: int
    recorded_as: str
    def __init__(self, version: _Optional[int] = ..., state: _Optional[str] = ..., ready: _Optional[bool] = ..., reason: _Optional[str] = ..., memory_bytes: _Optional[int] = ..., load_seconds: _Optional[float] = ..., loaded_at: _Optional[float] = ..., last_used: _Optional[float] = ..., in_flight: _Optional[int] = ..., recorded_as: _Optional[str] = ...) -> None: ...

class ListModelsResponse(_message.Message):
    __slots__ = ("default_model", "models", "policies")
    DEFAULT_MODEL_FIELD_NUMBER: _ClassVar[int]
    MODELS_FIELD_NUMBER: _ClassVar[int]
    POLICIES_FIELD_NUMBER: _ClassVar[int]
    default_model: str
    models: _containers.RepeatedCompositeFieldContainer[ModelInfo]
    policies: _containers.RepeatedScalarFieldContainer[str]
    def __init__(self, default_model: _Optional[str] = ..., models: _Optional[_Iterable[_Union[ModelInfo, _Mapping]]] = ..., policies: _Optional[_Iterable[str]] = ...) -> None: ...

class ActivationMap(_message.Message):
    __slots__ = ("height", "width", "values")
    HEIGHT_FIELD_NUMBER: _ClassVar[int]
    WIDTH_FIELD_NUMBER: _ClassVar[int]
    VALUES_FIELD_NUMBER: _ClassVar[int]
    height: int
    width: int
    values: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, height: _Optional[int] = ..., width: _Optional[int] = ..., values: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedRequest(_message.Message):
    __slots__ = ("model", "images", "id", "version", "normalize", "budget_ms", "priority")
    MODEL_FIELD_NUMBER: _ClassVar[int]
    IMAGES_FIELD_NUMBER: _ClassVar[int]
    ID_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZE_FIELD_NUMBER: _ClassVar[int]
    BUDGET_MS_FIELD_NUMBER: _ClassVar[int]
    PRIORITY_FIELD_NUMBER: _ClassVar[int]
    model: str
    images: _containers.RepeatedScalarFieldContainer[bytes]
    id: str
    version: int
    normalize: bool
    budget_ms: float
    priority: str
    def __init__(self, model: _Optional[str] = ..., images: _Optional[_Iterable[bytes]] = ..., id: _Optional[str] = ..., version: _Optional[int] = ..., normalize: _Optional[bool] = ..., budget_ms: _Optional[float] = ..., priority: _Optional[str] = ...) -> None: ...

class Embedding(_message.Message):
    __slots__ = ("vector",)
    VECTOR_FIELD_NUMBER: _ClassVar[int]
    vector: _containers.RepeatedScalarFieldContainer[float]
    def __init__(self, vector: _Optional[_Iterable[float]] = ...) -> None: ...

class EmbedResponse(_message.Message):
    __slots__ = ("id", "model", "version", "dimension", "normalized", "embeddings", "timings", "route")
    ID_FIELD_NUMBER: _ClassVar[int]
    MODEL_FIELD_NUMBER: _ClassVar[int]
    VERSION_FIELD_NUMBER: _ClassVar[int]
    DIMENSION_FIELD_NUMBER: _ClassVar[int]
    NORMALIZED_FIELD_NUMBER: _ClassVar[int]
    EMBEDDINGS_FIELD_NUMBER: _ClassVar[int]
    TIMINGS_FIELD_NUMBER: _ClassVar[int]
    ROUTE_FIELD_NUMBER: _ClassVar[int]
    id: str
    model: str
    version: int
    dimension: int
    normalized: bool
    embeddings: _containers.RepeatedCompositeFieldContainer[Embedding]
    timings: Timings
    route: Route
    def __init__(self, id: _Optional[str] = ..., model: _Optional[str] = ..., version: _Optional[int] = ..., dimension: _Optional[int] = ..., normalized: _Optional[bool] = ..., embeddings: _Optional[_Iterable[_Union[Embedding, _Mapping]]] = ..., timings: _Optional[_Union[Timings, _Mapping]] = ..., route: _Optional[_Union[Route, _Mapping]] = ...) -> None: ...
