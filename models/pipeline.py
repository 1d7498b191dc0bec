"""One export, end to end: weights -> torch module -> verified ONNX -> atomically published version.

`models.export` is the CLI and the small public API around this. `publish` is the part every source
shares (torchvision/Lite variants here, timm checkpoints in `models.timm_export`, imported ONNX files in
`models.import_onnx`): fp32 first, then the derived precisions checked against it.
"""

from __future__ import annotations

import tempfile
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from models.accuracy import declared_accuracy
from models.agreement import measure, run_graph
from models.architectures import (
    IMAGENET_CLASSES,
    architecture_name,
    build_classifier,
    imagenet_categories,
    parameter_count,
    preprocessing,
)
from models.calibration import user_photos
from models.errors import ExportError
from models.graph import OUTPUT_NAMES, check_graph
from models.heads import output_specs
from models.labels import read_labels
from models.photos import AGREEMENT_SET, agreement_set, calibration_set
from models.precision import PRECISIONS, model_name
from models.quantize import quantize_int8
from models.repository import prepare, staged_version
from models.sources import Source, TorchGraphs, torch_exporter_versions
from models.variants import UnknownVariant, get_variant
from models.weights import DEFAULT_SEED, Weights, WeightsResolver, load_into, sha256_file
from service.model_spec import (
    LABELS_FILE,
    MODEL_FILE,
    MODEL_NAME_PATTERN,
    SPEC_FILE,
    Agreement,
    DerivedFrom,
    ModelSpec,
    Normalization,
    Precision,
    TensorSpec,
)
from service.preprocess.images import PreprocessSpec

Step = Callable[[str], None]


@dataclass(frozen=True)
class ExportResult:
    path: Path  # the version directory
    spec: ModelSpec
    seconds: float
    onnx_bytes: int
    # fp32: max |ONNX - torch| / max |torch| on the logits, batch 1; fp16/int8: None (see spec.agreement)
    verify_error: float | None


def _classes_and_labels(
    weights: Weights, num_classes: int | None, labels_file: Path | None
) -> tuple[int, list[str] | None]:
    labels = read_labels(labels_file) if labels_file is not None else None
    if num_classes is not None and num_classes <= 0:
        raise ExportError(f"--num-classes must be positive, got {num_classes}")
    if num_classes is not None and labels is not None and len(labels) != num_classes:
        raise ExportError(f"{labels_file} has {len(labels)} labels but --num-classes is {num_classes}")
    classes = num_classes or (len(labels) if labels else None) or weights.num_classes() or IMAGENET_CLASSES
    if labels is not None and weights.num_classes() not in (None, len(labels)):
        raise ExportError(
            f"{labels_file} has {len(labels)} labels but the checkpoint has {weights.num_classes()} classes"
        )
    if weights.provenance.kind == "imagenet" and classes != IMAGENET_CLASSES:
        raise ExportError(
            f"ImageNet weights have {IMAGENET_CLASSES} classes, not {classes}; "
            "use --weights PATH (your fine-tuned checkpoint) or --weights random"
        )
    if labels is None and classes != IMAGENET_CLASSES:
        raise ExportError(f"a {classes}-class model needs --labels FILE (one class name per line)")
    return classes, labels


def export(
    variant: str,
    repository: Path,
    weights: str = "default",
    version: int = 1,
    *,
    precisions: Sequence[Precision] = ("fp32",),
    name: str | None = None,
    num_classes: int | None = None,
    labels: Path | None = None,
    seed: int = DEFAULT_SEED,
    accuracy: float | None = None,
    calibration: Path | None = None,
    resolver: WeightsResolver | None = None,
    step: Step | None = None,
    published: Callable[[ExportResult], None] | None = None,
) -> list[ExportResult]:
    """Export one variant in each of `precisions`; see `export_variant` and `publish`.

    `resolver` is shared to warn about fallbacks once. `calibration`: the user's photos
    (models.calibration): int8 is calibrated on most of them and every derived precision is gated on
    the held-out rest, instead of the scikit-image sets.
    """
    started = time.monotonic()
    say = step or (lambda _msg: None)
    try:
        spec_variant = get_variant(variant)
    except UnknownVariant as e:
        raise ExportError(str(e)) from None
    base = name or spec_variant.key
    wanted = check_request(repository, base, version, precisions)
    resolver = resolver or WeightsResolver(seed=seed)

    say("loading weights")
    loaded = resolver.resolve(weights, spec_variant)
    classes, label_list = _classes_and_labels(loaded, num_classes, labels)
    if label_list is None:
        label_list = imagenet_categories(spec_variant)

    say("building model")
    torch.manual_seed(loaded.seed)
    classifier = build_classifier(spec_variant, classes)
    if loaded.state_dict is not None:
        load_into(classifier, loaded.state_dict, loaded.provenance.source or weights)
    pre = preprocessing(spec_variant)
    graphs = TorchGraphs(classifier, pre)
    source = Source(
        key=spec_variant.key,
        architecture=architecture_name(spec_variant),
        pre=pre,
        classes=classes,
        labels=label_list,
        weights=loaded.provenance,
        parameters=parameter_count(classifier),
        gmacs=graphs.gmacs,
        exporter=torch_exporter_versions(
            ["efficientnet-lite-pytorch"] if spec_variant.family == "lite" else []
        ),
        graphs=graphs,
        accuracy=lambda precision: declared_accuracy(spec_variant, loaded.provenance, precision, accuracy),
    )
    return publish(
        source,
        repository,
        base,
        version,
        wanted,
        say=say,
        published=published,
        started=started,
        calibration=calibration,
    )


def check_request(
    repository: Path, base: str, version: int, precisions: Sequence[Precision]
) -> list[Precision]:
    """The precisions to write, in canonical order, once names, version and repository are known good."""
    wanted = [p for p in PRECISIONS if p in precisions]
    if not wanted:
        raise ExportError("nothing to export: no precision requested")
    for precision in wanted:
        if not MODEL_NAME_PATTERN.match(model_name(base, precision)):
            raise ExportError(
                f"model name {model_name(base, precision)!r} must match {MODEL_NAME_PATTERN.pattern}"
            )
    if version < 1:
        raise ExportError(f"version must be at least 1, got {version}")
    prepare(repository)
    return wanted


def publish(
    source: Source,
    repository: Path,
    base: str,
    version: int,
    wanted: Sequence[Precision],
    *,
    say: Step = lambda _msg: None,
    published: Callable[[ExportResult], None] | None = None,
    started: float | None = None,
    calibration: Path | None = None,
) -> list[ExportResult]:
    """Write `source` in each of `wanted` (from `check_request`); one result per model, fp32 first.

    fp16 and int8 models are checked against the fp32 graph (`models.agreement`). When fp32 is not
    requested, the fp32 model already in the repository under the base name and version is the
    reference (it must come from the same source and weights); when there is none, a reference
    graph is written, used and discarded (`derived_from` then names a model not in the repository).
    `published` hears of each model as soon as it is in the repository (a later precision's failure
    does not take back an earlier one). `calibration`: see `export`.
    """
    started = time.monotonic() if started is None else started
    results: list[ExportResult] = []
    with tempfile.TemporaryDirectory(prefix=".reference-", dir=repository) as scratch:
        if "fp32" in wanted:
            results.append(_export_fp32(repository, base, version, source, say, started))
            if published:
                published(results[-1])
            fp32_path = results[0].path / MODEL_FILE
        else:
            fp32_path = _existing_reference(repository, base, version, source) or _scratch_reference(
                Path(scratch), source, say
            )
        derived = [p for p in wanted if p != "fp32"]
        if derived:
            pre = source.pre
            derived_from = DerivedFrom(name=base, version=version, onnx_sha256=sha256_file(fp32_path))
            preprocess_spec = PreprocessSpec(pre.crop_size, pre.resize_size, pre.interpolation)  # type: ignore[arg-type]
            say("running the fp32 graph on the agreement photos")
            user = user_photos(calibration, preprocess_spec) if calibration is not None else None
            photos = user.held_out if user is not None else agreement_set(preprocess_spec)
            fp32_outputs = run_graph(fp32_path, photos.pixels)
            calibrated: str | None = None
            for precision in derived:
                began = time.monotonic()
                target = model_name(base, precision)
                with staged_version(repository, target, version) as staging:
                    onnx_path = staging / MODEL_FILE
                    if precision == "fp16":
                        say("exporting fp16 ONNX")
                        source.graphs.fp16(onnx_path)
                    else:
                        say("quantising to int8 on the calibration photos")
                        calibrated = quantize_int8(
                            fp32_path,
                            user.calibration if user is not None else calibration_set(preprocess_spec).pixels,
                            onnx_path,
                            vanishing_activations=source.weights.kind == "random",
                        )
                        if user is not None:
                            calibrated = user.describe(calibrated)
                        check_graph(onnx_path, pre.crop_size)
                    say(f"{precision} agreement gate")
                    agreement = measure(
                        fp32_outputs,
                        run_graph(onnx_path, photos.pixels),
                        photos,
                        precision,
                        real_weights=source.weights.kind != "random",
                        image_set=user.image_set if user is not None else AGREEMENT_SET,
                    )
                    spec = _write_spec(
                        staging,
                        target,
                        version,
                        precision,
                        source,
                        derived_from=derived_from,
                        agreement=agreement,
                        calibration=calibrated if precision == "int8" else None,
                    )
                    onnx_bytes = onnx_path.stat().st_size
                results.append(
                    ExportResult(
                        path=repository / target / str(version),
                        spec=spec,
                        seconds=time.monotonic() - began,
                        onnx_bytes=onnx_bytes,
                        verify_error=None,
                    )
                )
                if published:
                    published(results[-1])
    return results


def _export_fp32(
    repository: Path, base: str, version: int, source: Source, say: Step, started: float
) -> ExportResult:
    with staged_version(repository, base, version) as staging:
        say("exporting ONNX and verifying it with ONNX Runtime")
        onnx_path = staging / MODEL_FILE
        error = source.graphs.fp32(onnx_path)
        spec = _write_spec(staging, base, version, "fp32", source)
        onnx_bytes = onnx_path.stat().st_size
    return ExportResult(
        path=repository / base / str(version),
        spec=spec,
        seconds=time.monotonic() - started,
        onnx_bytes=onnx_bytes,
        verify_error=error,
    )


def _existing_reference(repository: Path, base: str, version: int, source: Source) -> Path | None:
    """The fp32 model already published under `base` from the same source and weights, if there is one.

    One published under that name from other weights is an error: the new model would claim to be
    derived from it while it is not.
    """
    folder = repository / base / str(version)
    if not (folder / SPEC_FILE).exists():
        return None
    try:
        spec = ModelSpec.from_file(folder / SPEC_FILE)
    except (OSError, ValueError) as e:
        raise ExportError(f"cannot read {folder / SPEC_FILE} to use it as the fp32 reference: {e}") from None
    same = (
        spec.precision == "fp32"
        and spec.variant == source.key
        and spec.weights == source.weights
        and spec.num_classes == source.classes
        and sha256_file(folder / MODEL_FILE) == spec.onnx_sha256
    )
    if not same:
        raise ExportError(
            f"{folder} holds a different fp32 model (variant, weights or graph differ); export fp32 as well "
            f"(--precision fp32,...) to replace it, or choose another --name or --version"
        )
    return folder / MODEL_FILE


def _scratch_reference(scratch: Path, source: Source, say: Step) -> Path:
    say("exporting the fp32 reference graph")
    path = scratch / MODEL_FILE
    source.graphs.fp32(path)
    return path


def _write_spec(
    staging: Path,
    name: str,
    version: int,
    precision: Precision,
    source: Source,
    *,
    derived_from: DerivedFrom | None = None,
    agreement: Agreement | None = None,
    calibration: str | None = None,
) -> ModelSpec:
    pre, classes = source.pre, source.classes
    exporter = dict(source.exporter)
    if calibration is not None:
        exporter["quantizer"] = f"onnxruntime.quantization.quantize_static(QDQ, per-channel, {calibration})"
    elif precision == "fp16":
        exporter["exporter"] += ", float16 classifier with float32 normalisation and softmax"
    (staging / LABELS_FILE).write_text("\n".join(source.labels) + "\n", encoding="utf-8")
    spec = ModelSpec(
        name=name,
        version=version,
        variant=source.key,
        architecture=source.architecture,
        crop_size=pre.crop_size,
        resize_size=pre.resize_size,
        interpolation=pre.interpolation,  # type: ignore[arg-type]
        normalization=Normalization(mean=pre.mean, std=pre.std),
        inputs=(TensorSpec(name="pixels", dtype="uint8", shape=(-1, 3, pre.crop_size, pre.crop_size)),),
        outputs=(
            *(TensorSpec(name=n, dtype="float32", shape=(-1, classes)) for n in OUTPUT_NAMES),
            *output_specs(staging / MODEL_FILE),
        ),
        num_classes=classes,
        weights=source.weights,
        parameters=source.parameters,
        gmacs=source.gmacs,
        opset=source.opset,
        exporter=exporter,
        onnx_sha256=sha256_file(staging / MODEL_FILE),
        precision=precision,
        derived_from=derived_from,
        agreement=agreement,
        accuracy=source.accuracy(precision),
    )
    (staging / SPEC_FILE).write_text(spec.to_json(), encoding="utf-8")
    return spec
