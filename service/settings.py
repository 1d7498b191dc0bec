"""Service configuration: read once at start (CLI flags over `EFFNET_*` env vars over defaults)."""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.runtime.cpu_quota import cpu_quota_cores
from service.runtime.providers import CUDA

Device = Literal["auto", "cpu", "cuda"]
# Above this many GMACs per image (b4-b7), CPU batches of more than one image cost more per image.
CPU_BATCHING_MAX_GMACS = 3.0
# Up to this many GMACs per image (b0, lite0), a CPU batch is short enough that the waits between
# batches (for the GIL, for the event loop) leave cores idle with two batch threads: a third fills them.
CPU_SPARE_INSTANCE_MAX_GMACS = 0.5
MAX_INSTANCES = 64  # a model's config.json allows as many
GraphOptimization = Literal["disable", "basic", "extended", "all"]


def _affinity_cores() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def cpu_count() -> int:
    """Cores this process may use: its affinity mask, capped by a cgroup CPU quota rounded up (a pod
    limited to 2 CPUs on a 16-core node runs 2 threads per pool, not 16 that the quota throttles)."""
    cores, quota = _affinity_cores(), cpu_quota_cores()
    return cores if quota is None else max(1, min(cores, math.ceil(quota)))


def quota_binds() -> bool:
    """A cgroup CPU quota below the cores this process may run on: CPU time is rationed."""
    quota = cpu_quota_cores()
    return quota is not None and quota < _affinity_cores()


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="EFFNET_", extra="forbid")

    # --- what to serve ---
    repository: Path = Field(Path("models/repository"), description="model repository directory")
    models: str = Field("", description="comma-separated model names to load; empty: every model found")
    default_model: str | None = Field(
        None, description="model used when a request names none; default: the first real-weight model"
    )
    strict: bool = Field(False, description="fail start-up when any configured model cannot be loaded")

    # --- model lifecycle ---
    model_control: Literal["none", "poll", "explicit"] = Field(
        "none",
        description="none: load the repository at start; poll: also rescan it every poll_interval_s; "
        "explicit: load only `models` at start, the rest through the repository API",
    )
    poll_interval_s: float = Field(5.0, gt=0, description="poll mode: seconds between repository scans")
    memory_budget_mb: int = Field(
        0,
        ge=0,
        description="resident memory all loaded models may take together; models then load on first "
        "request and the least recently used idle one is unloaded to make room. 0: no budget",
    )
    hash_cache: Path | None = Field(
        Path.home() / ".cache" / "effnet-serve" / "onnx-sha256.json",
        description="file caching model.onnx digests by size and mtime, so restarts skip rehashing; "
        "unset or unwritable: hash at every load",
    )

    auto_budget_ms: float = Field(
        100.0, gt=0, le=600_000, description="variant=auto without budget_ms: the latency budget it meets"
    )
    auto_headroom: float = Field(
        0.6,
        gt=0,
        le=1,
        description="auto picks models predicted within this share of the budget: the prediction is a "
        "typical latency, the budget is meant for the slow tail (p99)",
    )

    # --- network ---
    host: str = Field("0.0.0.0", description="bind address for HTTP and gRPC")
    http_port: int = Field(8000, ge=1, le=65535)
    grpc_port: int = Field(8001, ge=1, le=65535)
    drain_timeout_s: float = Field(
        30.0, gt=0, description="graceful stop: time allowed to finish queued work"
    )

    # --- runtime (ONNX Runtime session options) ---
    device: Device = Field("auto", description="auto: CUDA when a session really gets it, else CPU")
    cuda_device_id: int = Field(0, ge=0)
    cpus: int = Field(
        0,
        ge=0,
        description="the cores the server sizes itself for (ORT threads, decode threads, CPU instances); "
        "0: the cores this process may use (affinity mask, capped by a cgroup CPU quota rounded up). Set it "
        "where a container has a CPU request and no limit: it may run on every core of its node (the "
        "Kubernetes manifests set it from requests.cpu); set below those cores, ORT threads do not spin",
    )
    intra_op_threads: int = Field(0, ge=0, description="threads per session; 0: the server's cores (`cpus`)")
    cuda_intra_op_threads: int = Field(
        1,
        ge=0,
        description="intra-op threads of a session on CUDA: its kernels are launched from one thread, and "
        "one per core gave each of 9 bucket sessions x 2 instances a pool of 16; 0: as on the CPU "
        "(intra_op_threads). A session that falls back to the CPU gets the CPU's threads",
    )
    inter_op_threads: int = Field(1, ge=1)
    allow_spinning: bool | None = Field(
        None,
        description="ORT worker threads spin-wait for their next piece of work while a batch runs (b0 at "
        "one client: p50 18 % lower), or sleep (false). Unset: spin unless a cgroup CPU quota (a container "
        "or pod CPU limit) rations the process's cores, where spinning would spend the quota; "
        "only a batch that runs alone has worker threads to spin (overlapping batches run on one thread)",
    )
    spin_between_runs: bool = Field(
        False,
        description="with allow_spinning, the threads also keep spinning after a batch ends (ORT's default, "
        "and the CPU that preprocessing needs burns between requests); false: spinning stops when the "
        "last running batch returns and starts again with the next",
    )
    graph_optimization: GraphOptimization = "all"
    cudnn_conv_algo_search: Literal["EXHAUSTIVE", "HEURISTIC", "DEFAULT"] = "HEURISTIC"
    warmup_runs: int = Field(2, ge=0, description="warm-up runs per batch size before a model is ready")

    # --- batching ---
    max_batch_size: int = Field(
        0,
        ge=0,
        description="0: on CPU 4 for models up to 3 GMACs (b0-b3), else 1; on CUDA from GMACs (32-256)",
    )
    instances: int = Field(
        0,
        ge=0,
        description="batches run at once per model (each on its own thread); 0: on CPU one per core (`cpus`) "
        "for models up to 3 GMACs (b1-b3) and, from 2 cores, one more up to 0.5 GMACs (b0, lite0: 3 on 2 "
        "cores), else 1; at most 64; on CUDA 2",
    )
    single_thread_overlap: bool = Field(
        True,
        description="on CPU, a batch that starts while another runs or decodes uses a one-thread session "
        "of the model (no barrier between threads at every operator: the cores stay busy at saturation), "
        "while a batch that runs alone keeps every intra-op thread (the latency of one client); all "
        "overlapping batches share that one session, which costs one session's memory per model",
    )
    overlap_run_size: int = Field(
        1,
        ge=0,
        description="on CPU, an overlapping batch runs on the one-thread session in pieces of at most this "
        "many images (one image's activations stay in a core's cache where four images' spill from it); "
        "0: the whole batch in one run",
    )
    max_queue_delay_ms: float = Field(0.0, ge=0, description="hold a non-full batch at most this long")
    max_queue_size: int = Field(64, ge=1, description="queued images per model before 503")
    priority_aging_ms: float = Field(
        1000.0,
        gt=0,
        le=600_000,
        description="an image that has waited this long may be decoded and batched ahead of higher "
        "priorities (high > normal > low otherwise), in at most a quarter of the images handed out: low "
        "priority never starves, and high keeps its place under saturation",
    )
    high_fill_slack: float = Field(
        1.25,
        ge=1,
        le=10,
        description="a batch that holds high-priority images takes lower-priority ones too only while its "
        "measured cost stays within this factor of the high images' own (a CPU: none; a GPU: many)",
    )
    high_fill_unmeasured: int = Field(
        0, ge=0, description="lower-priority images such a batch takes while that cost is not measured yet"
    )
    high_priority_lane: bool = Field(
        True,
        description="one more runner per model (and one more decoding thread) for high-priority images "
        "alone, used when every other one is busy: a person's photo does not wait for a bulk job's batch",
    )

    # --- response cache (models opt in with `"response_cache": true` in their config.json) ---
    cache_url: str | None = Field(
        None,
        description="redis://host:port/db: a response cache shared by every replica; unset: in this process",
    )
    cache_size_mb: float = Field(
        256.0, ge=0, description="in-process response cache: the most memory its answers take; 0: off"
    )
    cache_ttl_s: int = Field(86_400, ge=1, description="Redis response cache: seconds an answer is kept")
    cache_timeout_ms: float = Field(
        200.0,
        gt=0,
        le=10_000,
        description="Redis response cache: the longest a lookup or store may take; slower or down: served "
        "without the cache",
    )

    # --- preprocessing and limits ---
    preprocess_workers: int = Field(0, ge=0, description="decode/resize threads; 0: the number of cores")
    preprocess_in_batch: bool = Field(
        True,
        description="on the CPU provider, each image is decoded and resized by the thread that runs its "
        "batch, just before the run (one thread per image, no hand-offs; measured on b0 at 16 clients: "
        "2.5-10 % less CPU per image in six A/B rounds); off: by the preprocessing threads, overlapping "
        "the running batch. Models on CUDA always use the preprocessing threads",
    )
    max_pending_preprocess: int = Field(
        256, ge=1, description="images being decoded or waiting to be, across models, before 503"
    )
    max_body_bytes: int = Field(32 * 1024 * 1024, ge=1024, description="largest request body accepted")
    max_image_pixels: int = Field(40_000_000, ge=1, description="largest decoded width*height accepted")
    max_images_per_request: int = Field(64, ge=1)
    max_top_k: int = Field(100, ge=1)
    request_timeout_s: float = Field(30.0, gt=0, description="deadline for a request that brings none")

    # --- security ---
    api_key: SecretStr | None = Field(None, description="when set, requests need 'Authorization: Bearer KEY'")
    admin_api_key: SecretStr | None = Field(
        None,
        description="when set, model load/unload (the repository API) needs this key instead of api_key",
    )
    grpc_tls_cert: Path | None = Field(
        None, description="PEM certificate chain: serve gRPC over TLS (needs grpc_tls_key)"
    )
    grpc_tls_key: Path | None = Field(None, description="PEM private key of grpc_tls_cert")
    grpc_tls_client_ca: Path | None = Field(
        None, description="PEM CA bundle: with TLS on, require client certificates it signed (mTLS)"
    )

    # --- logging ---
    log_level: str = "INFO"
    log_json: bool = False
    access_log: bool = Field(
        True, description="one line per request (protocol, route, model, status, ms, request id)"
    )

    # --- GPU path (service/runtime/session.py, service/core/precision.py, service/preprocess/backends.py) ---
    precision: Literal["auto", "fp32", "fp16"] = Field(
        "auto",
        description="which graph a bare variant name means: auto: '<name>-fp16' when that model is loaded "
        "on CUDA, else '<name>'; fp16: '<name>-fp16' wherever it is loaded; fp32: '<name>'. "
        "Explicit names (b0-fp16) always work",
    )
    decoder: Literal["auto", "pillow", "nvimgcodec"] = Field(
        "auto",
        description="JPEG decoding: nvimgcodec decodes on the GPU (nvidia-nvimgcodec-cu13); auto: nvimgcodec "
        "when the model runs on CUDA and the library loads, else Pillow. What nvImageCodec refuses "
        "falls back to Pillow per image",
    )
    resize: Literal["auto", "pillow", "graph"] = Field(
        "auto",
        description="resize and centre crop: graph runs a small ONNX graph built from model.json (on the "
        "model's device); auto: graph when decoding on the GPU, else Pillow (the CPU path)",
    )
    batch_buckets: Literal["auto", "on", "off"] = Field(
        "auto",
        description="pad each batch up to the next warmed size (1, 2, 4, ..., max): no first-time shapes, "
        "no memory growth from odd sizes; auto: on for CUDA, off on CPU",
    )
    bucket_sessions: Literal["auto", "on", "off"] = Field(
        "auto",
        description="one ONNX Runtime session per batch bucket, each of which only ever sees its own batch "
        "size: with cuDNN 9, ORT's CUDA convolution keeps the execution plan of the last input shape it "
        "ran, and a batch of another size rebuilds the plan of every convolution (b0 has 81), which cost "
        "the first GPU check about a second per batch. Costs one copy of the weights and one memory arena "
        "per bucket. auto: on for CUDA with buckets, off on CPU (its kernels keep no per-shape plans)",
    )
    io_binding: Literal["auto", "on", "off"] = Field(
        "auto",
        description="run through ONNX Runtime IO binding with preallocated per-bucket buffers (pinned host "
        "input, outputs fetched once per batch); auto: on for CUDA",
    )
    gpu_mem_limit_mb: int = Field(0, ge=0, description="CUDA arena limit per session in MiB; 0: no limit")
    arena_extend_strategy: Literal["kSameAsRequested", "kNextPowerOfTwo"] = Field(
        "kSameAsRequested", description="how the CUDA memory arena grows"
    )
    cuda_graphs: bool = Field(
        False,
        description="capture one CUDA graph per batch bucket (ORT enable_cuda_graph; needs buckets and IO "
        "binding, serialises runs of one model); keep only if it measures faster",
    )
    cuda_shared_arena: bool = Field(
        False,
        description="one CUDA memory arena per device, shared by every session of the process (ORT's "
        "env-registered allocator and session.use_env_allocators) instead of one arena per session: "
        "bucket sessions hold nine per model and instance. Off until measured (bench/gpu)",
    )
    cuda_tf32: bool = Field(
        True,
        description="let CUDA run fp32 convolutions and matrix products in TF32 (ORT's use_tf32, on by "
        "default there): faster on Ampere and newer, about 3 decimal digits instead of 7 inside; off: "
        "true fp32. Set explicitly in every CUDA session and shown in its log line",
    )
    nvimgcodec_max_batch: int = Field(
        64, ge=1, description="JPEGs decoded together in one nvImageCodec call (images waiting at once)"
    )
    front_processes: int | Literal["auto"] = Field(
        "auto",
        description="split mode (service/split/): this many front processes (HTTP, gRPC, admission, "
        "Pillow decoding, sharing the ports) feed one engine process (models, batcher, sessions) through "
        "shared memory; 0: one process. auto: 0 on the CPU or below 4 cores, else half the cores, at most 8",
    )
    front_shared_memory_mb: int = Field(
        32,
        ge=1,
        description="split mode: each front's part of the engine's shared memory (payloads in flight)",
    )
    emulate_device: str = Field(
        "",
        description="for benchmarks only: '<curve>[:<scale>]' replaces each model's device with a replay "
        "of a measured GPU batch-time curve (service/runtime/emulated.py): a variant measured in "
        "bench/results/gpu/gpu.json (b0, b0-fp16, ...) or a JSON file of that shape, times `scale`. "
        "Answers carry the graph's answer to a blank image; models describe their provider as emulated",
    )
    emulate_device_lock: str = Field(
        "",
        description="for benchmarks only: a lock file that the emulated devices of several servers share, "
        "as processes share one GPU (their batches then run one at a time across the servers)",
    )

    @field_validator("hash_cache", "cache_url", mode="before")
    @classmethod
    def _empty_is_none(cls, value: object) -> object:
        return None if isinstance(value, str) and not value.strip() else value

    # --- edges: connection-level protections (service/api/http/limits.py, service/api/grpc/options.py) ---
    http_header_timeout_s: float = Field(
        10.0, gt=0, description="time a connection may take to send a request's headers; then 408 and close"
    )
    http_body_timeout_s: float = Field(
        30.0, gt=0, description="time a request may take to send its whole body after the headers; then 408"
    )
    http_keep_alive_timeout_s: float = Field(
        75.0,
        gt=0,
        description="idle keep-alive connections close after this; keep it above the proxy's (nginx: 60 s)",
    )
    http_max_connections: int = Field(
        1000, ge=1, description="open HTTP connections served; above it requests get a fast 503"
    )
    http_health_reserve: int = Field(
        32, ge=0, description="extra connections above http_max_connections that may still ask health paths"
    )
    grpc_max_concurrent_streams: int = Field(
        256, ge=1, description="concurrent calls (HTTP/2 streams) per gRPC connection"
    )
    grpc_max_connection_age_s: float = Field(
        1800.0, ge=0, description="a gRPC connection is told to go away after this (rebalancing); 0: never"
    )
    grpc_max_connection_age_grace_s: float = Field(
        30.0, ge=0, description="time calls on a connection past its age get to finish before it is closed"
    )
    grpc_keepalive_time_s: float = Field(
        60.0, gt=0, description="the server pings a gRPC connection idle this long to see it is alive"
    )
    grpc_keepalive_timeout_s: float = Field(
        20.0, gt=0, description="a ping unanswered this long closes the gRPC connection"
    )
    grpc_min_client_ping_interval_s: float = Field(
        10.0, ge=0, description="clients pinging more often get GOAWAY (too_many_pings) after 2 strikes"
    )

    @field_validator("models")
    @classmethod
    def _strip(cls, value: str) -> str:
        return ",".join(name.strip() for name in value.split(",") if name.strip())

    @model_validator(mode="after")
    def _tls_pair(self) -> Settings:
        if (self.grpc_tls_cert is None) != (self.grpc_tls_key is None):
            raise ValueError("grpc_tls_cert and grpc_tls_key must be set together")
        if self.grpc_tls_client_ca is not None and self.grpc_tls_cert is None:
            raise ValueError("grpc_tls_client_ca needs grpc_tls_cert and grpc_tls_key")
        return self

    @property
    def model_names(self) -> list[str]:
        return [name for name in self.models.split(",") if name]

    @property
    def cores(self) -> int:
        """The cores the server sizes its threads and instances for: `cpus`, else cpu_count()."""
        return self.cpus or cpu_count()

    @property
    def effective_intra_op_threads(self) -> int:
        return self.intra_op_threads or self.cores

    @property
    def effective_allow_spinning(self) -> bool:
        """Unset: spin unless the cores are rationed (a quota) or shared (`cpus` below the cores the
        process may run on: a pod's request without a limit), where a spinning thread takes a core
        that other work is owed."""
        if self.allow_spinning is not None:
            return self.allow_spinning
        shared = 0 < self.cpus < _affinity_cores()
        return not (quota_binds() or shared)

    @property
    def effective_preprocess_workers(self) -> int:
        return self.preprocess_workers or self.cores

    def batch_size_for(self, provider: str, gmacs: float) -> int:
        """Measured on the CPU provider: batching gains 18-38 % images/s for b0-b3 up to about 4,
        and loses for the big variants (b7 at batch 2 is ~8 % slower per image than at batch 1)."""
        if self.max_batch_size:
            return self.max_batch_size
        if provider == CUDA:
            return cuda_batch_size(gmacs)
        return 4 if gmacs <= CPU_BATCHING_MAX_GMACS else 1

    def instances_for(self, provider: str, gmacs: float = 0.0) -> int:
        """On CUDA two batches run at once, so one's copy-in overlaps the other's compute. On CPU, batches
        that overlap each run on one core (single_thread_overlap), decoding their own images, so it takes
        one instance per core to keep the cores busy at saturation: the small and middle variants get
        `cores` instances, and the smallest one more (their batches are short enough that the waits
        between them, for the GIL and the event loop, leave cores idle; on 2 cores b0 +3 %, lite0 +6 %
        images/s at 16 clients with the third, b1 even, b3 -3 %; on 1 core b0 lost 4 % with a second:
        docs/benchmark-history.md). The big ones (b4-b7) run one batch at a time: a second instance adds the
        one-thread session, doubling their memory (b4 260 -> 517 MB, b7 799 -> 1,615 MB) for 12 % more
        images/s (b4 on 2 cores). Instances are threads: all of a model's overlapping batches share its
        one-thread session."""
        if self.instances:
            return self.instances
        if provider == CUDA:
            return 2
        if gmacs > CPU_BATCHING_MAX_GMACS:
            return 1
        cores = self.cores
        spare = gmacs <= CPU_SPARE_INSTANCE_MAX_GMACS and cores > 1  # on one core no core idles to fill
        per_core = cores + 1 if spare else cores
        return min(per_core, MAX_INSTANCES)


def cuda_batch_size(gmacs: float) -> int:
    """Default largest CUDA batch per model, from its GMACs: about 300 GMACs of work per batch, a power
    of two between 32 and 256 (b0-b2 256, b3 128, b4 64, b5-b7 32). An estimate from published
    A100/H100 figures (b0 peaks at batch 256); to be replaced by the first GPU machine's measurement
    (bench/gpu: bare ORT CUDA images/s at batch 1..256 per variant)."""
    size = 256
    while size > 32 and size * gmacs > 300.0:
        size //= 2
    return size
