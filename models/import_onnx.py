"""Import any ONNX image classifier as a first-class model: `python -m models.import --help`.

    python -m models.import model.onnx --name my-net --crop 300 --resize 320 --interpolation bicubic \
        --mean 0.485,0.456,0.406 --std 0.229,0.224,0.225 --layout nchw --scale 1 --labels classes.txt
    python -m models.import keras-b0.onnx --name keras-b0 --keras --crop 224 --labels imagenet

The graph is checked (one float image input of rank 4, one score output, a batch axis or a fixed
batch that is made dynamic), wrapped with the uint8 `pixels` front and the `logits`/`probabilities`
back (`models.onnx_wrap`), verified in ONNX Runtime against the file as it came, and published like an
exported model (`model.json`, `labels.txt`; `--precision fp16,int8` with the same agreement gates).
Its weights provenance is `imported`, with the source file's sha256. Nothing is written on refusal.
"""

from __future__ import annotations

import argparse
import copy
import sys
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import onnx

from models.accuracy import stated_accuracy
from models.architectures import Preprocessing
from models.errors import ExportError
from models.graph import check_graph
from models.heads import HeadNotFound, add_to_file
from models.labels import FolderOrder, check_count, read_labels
from models.onnx_wrap import (
    FLOATS,
    Front,
    GraphRefused,
    Interface,
    Layout,
    inspect,
    opset,
    with_dynamic_batch,
    wrap,
)
from models.sources import Source, package_versions
from models.weights import sha256_file
from service.model_spec import DeclaredAccuracy, Precision, WeightsProvenance

# Relative to the largest |logit| (or absolute on probabilities): the front only reorders float32 maths.
TOLERANCE = 1e-4
INTERPOLATIONS = ("nearest", "bilinear", "bicubic")
KERAS = {"layout": "nhwc", "scale": 255.0, "mean": (0.0, 0.0, 0.0), "std": (1.0, 1.0, 1.0)}


def _session(model: onnx.ModelProto | bytes | Path) -> object:
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.log_severity_level = 3
    data = (
        str(model)
        if isinstance(model, Path)
        else model
        if isinstance(model, bytes)
        else model.SerializeToString()
    )
    return ort.InferenceSession(data, options, providers=["CPUExecutionProvider"])


def _run(session: object, feed: dict[str, np.ndarray]) -> np.ndarray:
    return np.asarray(session.run(None, feed)[0])  # type: ignore[attr-defined]


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _pixels(batch: int, crop: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (batch, 3, crop, crop), dtype=np.uint8)


class ImportedGraphs:
    """The imported graph behind our front; fp32 as it came, fp16 through ORT's float16 converter."""

    def __init__(
        self,
        source: bytes,
        model: onnx.ModelProto,
        interface: Interface,
        front: Front,
        crop: int,
        classes: int,
    ) -> None:
        self._source = source  # the file as it came: what the wrapped graph is checked against
        self._model = model  # with a dynamic batch axis
        self._interface = interface
        self._front = front
        self._crop = crop
        self._classes = classes

    def _write(self, inner: onnx.ModelProto, path: Path) -> None:
        onnx.save(wrap(inner, self._interface, self._front, self._crop, self._classes), str(path))
        try:
            # Features and activation maps where the graph ends in an EfficientNet head (pool, linear);
            # any other classifier is served without them.
            add_to_file(path)
        except HeadNotFound:
            pass
        try:
            check_graph(path, self._crop)
        except ExportError:
            raise
        except Exception as e:  # the ONNX checker's own errors: the wrapped graph is not valid ONNX
            raise ExportError(f"the wrapped graph fails the ONNX checker: {_first_line(e)}") from None

    def fp32(self, path: Path) -> float:
        self._write(self._model, path)
        return self.verify(path)

    def fp16(self, path: Path) -> None:
        from onnxruntime.transformers.float16 import convert_float_to_float16

        try:
            half = convert_float_to_float16(copy.deepcopy(self._model), keep_io_types=True)
        except Exception as e:  # the converter raises whatever the graph provokes
            raise ExportError(f"fp16 conversion of the imported graph failed: {e}") from None
        self._write(half, path)

    def verify(self, path: Path) -> float:
        """The wrapped graph against the original one fed the front's arithmetic in numpy."""
        interface, fixed = self._interface, self._interface.fixed_batch
        pixels = _pixels(fixed or 2, self._crop, seed=1)
        try:
            expected = _run(
                _session(self._source),
                {interface.input: self._front.apply(pixels, FLOATS[interface.input_type])},
            ).astype(np.float32)
            wrapped = _session(path)
        except Exception as e:
            raise ExportError(f"ONNX Runtime cannot run the wrapped graph: {_first_line(e)}") from None
        logits, probabilities = wrapped.run(["logits", "probabilities"], {"pixels": pixels})  # type: ignore[attr-defined]
        if interface.softmax_input is not None:
            error = float(np.abs(probabilities - expected).max())
        else:
            scale = float(np.abs(expected).max())
            error = float(np.abs(logits - expected).max()) / scale if scale > 0 else 0.0
        single = wrapped.run(["logits"], {"pixels": pixels[:1]})[0]  # type: ignore[attr-defined]
        scale = float(np.abs(logits).max()) or 1.0
        error = max(error, float(np.abs(single - logits[:1]).max()) / scale)
        if error > TOLERANCE or not np.allclose(probabilities.sum(axis=1), 1.0, atol=1e-4):
            raise ExportError(f"the wrapped graph disagrees with {path.name}'s source: error {error:.2e}")
        return error


def _probe(
    source: bytes, dynamic: onnx.ModelProto, interface: Interface, front: Front, crop: int, name: str
) -> int:
    """Run the original graph and the dynamic-batch one; the number of classes, or a refusal."""
    dtype = FLOATS[interface.input_type]
    fixed = interface.fixed_batch
    pixels = _pixels(max(fixed or 0, 3), crop)
    try:
        original = _run(_session(source), {interface.input: front.apply(pixels[: fixed or 3], dtype)})
    except Exception as e:
        raise GraphRefused(f"{name} does not run on a {crop}x{crop} image batch: {_first_line(e)}") from None
    if original.ndim != 2:
        raise GraphRefused(f"{name}: output has shape {original.shape}; a classifier gives (batch, classes)")
    if fixed is None:
        return int(original.shape[1])
    try:
        session = _session(dynamic)
        rows = [_run(session, {interface.input: front.apply(pixels[i : i + 1], dtype)}) for i in range(2)]
        pair = _run(session, {interface.input: front.apply(pixels[:2], dtype)})
    except Exception as e:
        reason = _first_line(e)
        raise GraphRefused(
            f"{name} has a fixed batch of {fixed} that cannot be made dynamic: {reason}"
        ) from None
    together = np.concatenate(rows)
    scale = float(np.abs(together).max()) or 1.0
    if pair.shape != together.shape or float(np.abs(pair - together).max()) / scale > TOLERANCE:
        raise GraphRefused(
            f"{name} has a fixed batch of {fixed} that cannot be made dynamic: images in one batch change "
            "each other's answers"
        )
    return int(original.shape[1])


def _count(model: onnx.ModelProto, interface: Interface, crop: int, layout: Layout) -> tuple[int, float]:
    """(parameters, GMACs at batch 1): initializer elements, and Conv/Gemm/MatMul multiply-accumulates
    from ONNX shape inference with the input's size fixed (operators it cannot size are not counted)."""
    fixed = copy.deepcopy(model)
    parameters = sum(int(np.prod(t.dims)) for t in fixed.graph.initializer)
    shape = [1, 3, crop, crop] if layout == "nchw" else [1, crop, crop, 3]
    for value in fixed.graph.input:
        if value.name == interface.input:
            for dim, size in zip(value.type.tensor_type.shape.dim, shape, strict=True):
                dim.Clear()
                dim.dim_value = size
    try:
        inferred = onnx.shape_inference.infer_shapes(fixed, data_prop=True)
    except Exception:
        return parameters, 0.0
    shapes = {
        v.name: [d.dim_value for d in v.type.tensor_type.shape.dim]
        for v in (*inferred.graph.value_info, *inferred.graph.output, *inferred.graph.input)
    }
    weights = {t.name: list(t.dims) for t in inferred.graph.initializer}
    macs = 0
    for node in inferred.graph.node:
        out = shapes.get(node.output[0]) if node.output else None
        weight = weights.get(node.input[1]) if len(node.input) > 1 else None
        if not out or not weight or 0 in out:
            continue
        if node.op_type == "Conv":
            macs += int(np.prod(out)) * int(np.prod(weight[1:]))
        elif node.op_type in ("Gemm", "MatMul"):
            trans_b = any(a.name == "transB" and a.i for a in node.attribute)
            inner = weight[-1] if trans_b else weight[-2] if len(weight) >= 2 else weight[0]
            macs += int(np.prod(out)) * int(inner)
    return parameters, macs / 1e9


def import_source(
    path: Path,
    *,
    crop: int | None,
    resize: int | None,
    interpolation: str,
    front: Front,
    labels: Path | str | None,
    accuracy: float | None = None,
    label_order: FolderOrder = "sorted",
) -> Source:
    """Check, probe and describe `path`; nothing is written here (see `models.pipeline.publish`)."""
    try:
        source = path.read_bytes()
    except OSError as e:
        raise ExportError(f"cannot read {path}: {e.strerror or e}") from None
    try:
        model = onnx.load_from_string(source)
        onnx.checker.check_model(model)
    except Exception as e:
        raise GraphRefused(f"{path.name} is not a valid ONNX model: {_first_line(e)}") from None
    interface = inspect(model, front.layout, path.name)
    crop = _crop(interface, front.layout, crop, path.name)
    resize = crop if resize is None else resize
    if resize < crop:
        raise ExportError(f"--resize {resize} is smaller than --crop {crop}")
    dynamic = with_dynamic_batch(model) if interface.fixed_batch is not None else model
    classes = _probe(source, dynamic, interface, front, crop, path.name)
    label_list = _labels(labels, classes, label_order)
    parameters, gmacs = _count(model, interface, crop, front.layout)
    mean, std = front.normalization()
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p) or "unknown producer"
    exporter = package_versions(["onnx", "onnxruntime-gpu", "onnxruntime"])
    exporter["exporter"] = (
        f"models.import_onnx: uint8 front (cast, (p - 255 mean) * scale / (255 std)"
        f"{', NCHW -> NHWC' if front.layout == 'nhwc' else ''}) and softmax around the imported graph"
    )
    exporter["source_producer"] = producer

    def declared(precision: Precision) -> DeclaredAccuracy | None:
        return stated_accuracy(accuracy, precision)

    return Source(
        key="imported",
        architecture=f"imported ONNX graph ({producer}), {front.layout}, input {interface.input!r}",
        pre=Preprocessing(crop, resize, interpolation, mean, std),
        classes=classes,
        labels=label_list,
        weights=WeightsProvenance(kind="imported", source=path.name, sha256=sha256_file(path)),
        parameters=max(parameters, 1),
        gmacs=max(round(gmacs, 6), 1e-6),
        exporter=exporter,
        graphs=ImportedGraphs(source, dynamic, interface, front, crop, classes),
        accuracy=declared,
        opset=opset(model),
    )


def _crop(interface: Interface, layout: Layout, crop: int | None, name: str) -> int:
    height, width = interface.spatial(layout)
    if isinstance(height, int) and isinstance(width, int) and height > 0 and width > 0:
        if height != width:
            raise GraphRefused(f"{name} takes {height}x{width} images; only square inputs are served")
        if crop is not None and crop != height:
            raise GraphRefused(f"{name} takes {height}x{width} images, not --crop {crop}")
        return height
    if crop is None:
        raise ExportError(f"{name} takes images of any size: give --crop (the size it was trained at)")
    if crop <= 0:
        raise ExportError(f"--crop must be positive, got {crop}")
    return crop


def _labels(labels: Path | str | None, classes: int, order: FolderOrder) -> list[str]:
    if labels == "imagenet":
        if classes != 1000:
            raise ExportError(f"--labels imagenet names 1000 classes; the graph gives {classes}")
        from torchvision.models import EfficientNet_B0_Weights

        return list(EfficientNet_B0_Weights.IMAGENET1K_V1.meta["categories"])
    if labels is None:
        raise ExportError(f"the graph gives {classes} classes: give --labels (file, folder or 'imagenet')")
    names = read_labels(Path(labels), folder_order=order)
    check_count(names, classes, labels)
    return names


def _parser() -> argparse.ArgumentParser:
    from models.timm_options import triple

    parser = argparse.ArgumentParser(
        prog="python -m models.import",
        description="Import an ONNX image classifier into the model repository: uint8 pixels in, logits "
        "and probabilities out, its own preprocessing in model.json.",
    )
    parser.add_argument("onnx", type=Path, help="the ONNX file (one float image input, one score output)")
    parser.add_argument("--name", required=True, help="model name in the repository")
    parser.add_argument("--repository", type=Path, default=Path("models/repository"))
    parser.add_argument("--version", type=int, default=1)
    parser.add_argument("--crop", type=int, default=None, help="input size (default: the graph's fixed size)")
    parser.add_argument(
        "--resize", type=int, default=None, help="shorter-side resize before the crop (default: crop)"
    )
    parser.add_argument(
        "--interpolation", choices=INTERPOLATIONS, default=None, help="default bicubic (--keras: bilinear)"
    )
    parser.add_argument("--mean", type=triple, default=None, help="R,G,B in [0, 1] units")
    parser.add_argument("--std", type=triple, default=None, help="R,G,B in [0, 1] units")
    parser.add_argument(
        "--layout", choices=("nchw", "nhwc"), default=None, help="default nchw (--keras: nhwc)"
    )
    parser.add_argument(
        "--scale", type=float, choices=(1.0, 255.0), default=None,
        help="1: the graph takes pixels / 255 (then normalised); 255: it takes 0-255 values (default 1)",
    )  # fmt: skip
    parser.add_argument(
        "--keras", action="store_true",
        help="a Keras/tf2onnx EfficientNet: NHWC, 0-255 floats, normalisation inside the graph "
        "(= --layout nhwc --scale 255 --mean 0 --std 1)",
    )  # fmt: skip
    parser.add_argument(
        "--labels",
        default=None,
        help="class names: text file, JSON list or {index: name} map, a folder of class folders, "
        "or 'imagenet'",
    )
    parser.add_argument(
        "--label-order",
        choices=("sorted", "natural"),
        default="sorted",
        help="order of a labels folder: sorted (torchvision, Keras) or natural (timm)",
    )
    parser.add_argument("--precision", action="append", default=None, help="fp32,fp16,int8 (default fp32)")
    parser.add_argument(
        "--accuracy", type=float, default=None, metavar="TOP1", help="ImageNet top-1 you state"
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR|CSV",
        help="your photos: int8 calibrated on most of them, derived precisions gated on the held-out rest",
    )
    return parser


def front_from(args: argparse.Namespace) -> Front:
    if args.keras:
        clashes = [f"--{k}" for k in ("layout", "scale", "mean", "std") if getattr(args, k) is not None]
        if clashes:
            raise ExportError(f"--keras sets {', '.join(clashes)} itself; leave them out or drop --keras")
        return Front(**KERAS)  # type: ignore[arg-type]
    if args.mean is None or args.std is None:
        raise ExportError(
            "give --mean and --std (the normalisation the model was trained with), or --keras when the "
            "graph normalises itself (use --mean 0 --std 1 for a graph that takes plain pixels / 255)"
        )
    if min(args.std) <= 0:
        raise ExportError("--std values must be positive")
    return Front(layout=args.layout or "nchw", mean=args.mean, std=args.std, scale=args.scale or 1.0)


def main(argv: Sequence[str] | None = None) -> int:
    from models.pipeline import check_request, publish
    from models.precision import parse_precisions

    args = _parser().parse_args(argv)
    started = time.monotonic()
    try:
        precisions = parse_precisions(args.precision or ["fp32"])
        front = front_from(args)
        source = import_source(
            args.onnx,
            crop=args.crop,
            resize=args.resize,
            interpolation=args.interpolation or ("bilinear" if args.keras else "bicubic"),
            front=front,
            labels=args.labels,
            accuracy=args.accuracy,
            label_order=args.label_order,
        )
        wanted = check_request(args.repository, args.name, args.version, precisions)
        results = publish(
            source,
            args.repository,
            args.name,
            args.version,
            wanted,
            started=started,
            calibration=args.calibration,
        )
        for result in results:
            spec = result.spec
            print(
                f"{spec.name}: {spec.precision}, imported from {args.onnx.name}, {spec.num_classes} classes, "
                f"{spec.crop_size}px (resize {spec.resize_size}, {spec.interpolation}), "
                f"{result.seconds:.1f} s -> {result.path}"
            )
    except ExportError as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
