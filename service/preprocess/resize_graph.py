"""Resize and centre-crop as a small ONNX graph built from a model's preprocessing spec.

Input `image`: uint8 (N, H, W, 3), RGB, a batch of images of one size. Output `pixels`: uint8
(N, 3, crop, crop).
Geometry is torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` on a PIL image, as
service/preprocess/images.py documents: the shorter side becomes resize_size, the longer one
``int(resize_size * long / short)``; crop offsets ``round((size - crop) / 2)``, half to even. The
resampling is ONNX ``Resize`` with antialiasing (a kernel widened by the downscale factor, as
Pillow does), half-pixel centres, Pillow's bicubic coefficient -0.5 and its border handling
(weights outside the image dropped and the rest renormalised: ``exclude_outside``).

The same graph runs on the CPU provider (tests compare it with the Pillow path) and on CUDA, where
it reads the decoded images from device memory and its output stays there: once per decoded batch
(per image size in it), on the decoder's own stream (ORT `user_compute_stream`), into one output
whose rows then go to the model's batch in one copy. Built with the `onnx` helper API at model load:
no files, no torch.

Fidelity: the reference for both this graph and the Pillow path is torchvision's Resize + CenterCrop
on the full-resolution image. On a 1080p photo this graph is within 3 grey levels of it (b0's 256);
the Pillow path is up to about 30 away (mean 1.4), because it decodes JPEGs at reduced scale (libjpeg
DCT scaling) for speed, a shortcut measured to change no top-1 answer. So where the two differ, the
graph does not imitate the shortcut: a difference beyond the bounds tested in
tests/unit/preprocess/test_resize_graph.py is corrected on the Pillow path (less draft), never by
moving the graph away from the reference.
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass
from typing import Any, Final

import numpy as np
import onnx
from onnx import TensorProto, helper

from service.preprocess.images import PreprocessSpec
from service.runtime.device import DeviceContext
from service.runtime.providers import CPU, CUDA

log = logging.getLogger(__name__)

INPUT_NAME: Final = "image"
OUTPUT_NAME: Final = "pixels"
OPSET: Final = 19

_MODES: Final = {"nearest": "nearest", "bilinear": "linear", "bicubic": "cubic"}


def _const(name: str, values: list[int], dtype: int = TensorProto.INT64) -> onnx.TensorProto:
    return helper.make_tensor(name, dtype, [len(values)], values)


def build_resize_crop_graph(spec: PreprocessSpec) -> onnx.ModelProto:
    """The ONNX model for one spec (see the module docstring)."""
    size, crop = spec.resize_size, spec.crop_size
    mode = _MODES[spec.interpolation]
    resize_attrs: dict[str, Any] = {"mode": mode, "coordinate_transformation_mode": "half_pixel"}
    if mode == "nearest":
        resize_attrs["nearest_mode"] = "round_prefer_ceil"  # floor((x + 0.5) * scale), as Pillow samples
    else:
        resize_attrs["antialias"] = 1
        resize_attrs["exclude_outside"] = 1
        if mode == "cubic":
            resize_attrs["cubic_coeff_a"] = -0.5
    nodes = [
        # (N, H, W, 3) -> (N, 3, H, W) float
        helper.make_node("Transpose", [INPUT_NAME], ["nchw_u8"], perm=[0, 3, 1, 2]),
        helper.make_node("Cast", ["nchw_u8"], ["nchw"], to=TensorProto.FLOAT),
        helper.make_node("Shape", [INPUT_NAME], ["n"], start=0, end=1),
        # Output size, in integers: the shorter side -> size, the longer -> (size * long) // short.
        helper.make_node("Shape", [INPUT_NAME], ["hw"], start=1, end=3),
        helper.make_node("Split", ["hw"], ["h", "w"], axis=0, num_outputs=2),
        helper.make_node("LessOrEqual", ["w", "h"], ["portrait"]),
        helper.make_node("Mul", ["h", "size"], ["size_h"]),
        helper.make_node("Div", ["size_h", "w"], ["scaled_h"]),
        helper.make_node("Mul", ["w", "size"], ["size_w"]),
        helper.make_node("Div", ["size_w", "h"], ["scaled_w"]),
        helper.make_node("Where", ["portrait", "scaled_h", "size"], ["out_h"]),
        helper.make_node("Where", ["portrait", "size", "scaled_w"], ["out_w"]),
        helper.make_node("Concat", ["n", "three", "out_h", "out_w"], ["sizes"], axis=0),
        helper.make_node("Resize", ["nchw", "", "", "sizes"], ["resized"], **resize_attrs),
        # Centre crop: offsets round((side - crop) / 2), half to even like Python's round.
        helper.make_node("Concat", ["out_h", "out_w"], ["out_hw"], axis=0),
        helper.make_node("Sub", ["out_hw", "crop"], ["spare"]),
        helper.make_node("Cast", ["spare"], ["spare_f"], to=TensorProto.FLOAT),
        helper.make_node("Mul", ["spare_f", "half"], ["half_spare"]),
        helper.make_node("Round", ["half_spare"], ["offset_f"]),
        helper.make_node("Cast", ["offset_f"], ["starts"], to=TensorProto.INT64),
        helper.make_node("Add", ["starts", "crop"], ["ends"]),
        helper.make_node("Slice", ["resized", "starts", "ends", "axes_hw"], ["cropped"]),
        # Back to uint8 the way Pillow stores a resampled pixel: rounded, clamped.
        helper.make_node("Round", ["cropped"], ["rounded"]),
        helper.make_node("Clip", ["rounded", "zero", "max255"], ["clipped"]),
        helper.make_node("Cast", ["clipped"], [OUTPUT_NAME], to=TensorProto.UINT8),
    ]
    initializers = [
        _const("size", [size]),
        _const("crop", [crop]),
        _const("three", [3]),
        _const("axes_hw", [2, 3]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("max255", TensorProto.FLOAT, [], [255.0]),
    ]
    graph = helper.make_graph(
        nodes,
        f"resize{size}_crop{crop}_{spec.interpolation}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["N", "H", "W", 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, ["N", 3, crop, crop])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


@dataclass(frozen=True)
class Copy2D:
    """One pitched copy of a decoded image into its slot of a batch (service/runtime/device.py)."""

    dst: int
    dst_pitch: int
    src: int
    src_pitch: int
    width: int  # bytes per image row
    height: int


def stack_copies(interfaces: list[dict[str, Any]], base: int) -> list[Copy2D]:
    """Copies stacking images of one (H, W, 3) uint8 shape, given by their `__cuda_array_interface__`,
    into a contiguous (N, H, W, 3) batch at `base`: rows may be padded in the source (a pitch)."""
    copies = []
    for index, interface in enumerate(interfaces):
        height, width, channels = interface["shape"]
        row = width * channels
        strides = interface.get("strides")
        pitch = strides[0] if strides else row
        if strides and (strides[1] != channels or strides[2] != 1):
            raise ValueError(f"an image with strides {strides} is not row-contiguous RGB")
        copies.append(Copy2D(base + index * height * row, row, int(interface["data"][0]), pitch, row, height))
    return copies


def size_groups(images: list[Any]) -> dict[tuple[int, ...], list[int]]:
    """Positions of the images (None: skipped) by shape, in order: one graph run per group."""
    groups: dict[tuple[int, ...], list[int]] = {}
    for index, image in enumerate(images):
        if image is not None:
            shape = (
                tuple(image.__cuda_array_interface__["shape"]) if _on_device(image) else tuple(image.shape)
            )
            groups.setdefault(shape, []).append(index)
    return groups


def _on_device(image: Any) -> bool:
    return hasattr(image, "__cuda_array_interface__")


class ResizeGraphRunner:
    """The resize graph in an ONNX Runtime session, on the CPU or the model's CUDA device.

    `run_batch(images)`: (H, W, 3) uint8 RGB images (None for the ones to skip) -> (3, crop, crop) rows,
    one graph run per image size among them. On CUDA the images are device arrays (nvImageCodec's),
    stacked on the context's stream, resized there (the session runs on that stream) into one
    (n, 3, crop, crop) device array whose rows are returned: the decoder thread calls this once per
    decoded batch. `__call__(image)`: one image, host or device (the Pillow-decoded path). On the CPU
    provider rows are numpy arrays. Thread-safe: each thread binds through its own IO binding.
    """

    def __init__(
        self,
        spec: PreprocessSpec,
        device: str = "cpu",
        device_id: int = 0,
        context: DeviceContext | None = None,
    ) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # it runs in the preprocessing pool: one image per thread
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers: list[Any] = [CPU]
        self.context = context
        if device == "cuda" and self.context is None:
            try:
                self.context = DeviceContext(device_id)
            except Exception as exc:  # no CuPy: no device arrays to hand on, so the graph runs on the CPU
                log.warning("event=resize_graph_on_cpu reason=%r", str(exc))
        if device == "cuda" and self.context is not None:
            # On the decoder's stream: its decoded images are ready there, and the run's end waits for
            # that stream alone.
            cuda = {"device_id": device_id, "user_compute_stream": str(self.context.stream_ptr)}
            providers.insert(0, (CUDA, cuda))
        self.session = ort.InferenceSession(
            build_resize_crop_graph(spec).SerializeToString(), sess_options=options, providers=providers
        )
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        self.device_id = device_id
        self.crop = spec.crop_size
        self.runs = 0  # graph runs, for tests and logs
        self._local = threading.local()

    def __call__(self, image: Any) -> Any:
        return self.run_batch([image])[0]

    def run_batch(self, images: list[Any]) -> list[Any]:
        rows: list[Any] = [None] * len(images)
        for shape, positions in size_groups(images).items():
            group = [images[i] for i in positions]
            out = self._run_group(group, shape)
            for position, row in zip(positions, out, strict=True):
                rows[position] = row
        return rows

    def _run_group(self, group: list[Any], shape: tuple[int, ...]) -> Any:
        self.runs += 1
        if self.device == "cpu":
            host = [self._to_host(image) for image in group]
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: np.stack(host)})[0]
        assert self.context is not None
        binding = getattr(self._local, "binding", None)
        if binding is None:
            binding = self._local.binding = self.session.io_binding()
        keep: list[Any] = []
        if all(_on_device(image) for image in group):
            batch = self.context.empty((len(group), *shape))
            interfaces = [image.__cuda_array_interface__ for image in group]
            for c in stack_copies(interfaces, int(batch.data.ptr)):
                self.context.copy_2d(c.dst, c.dst_pitch, c.src, c.src_pitch, c.width, c.height)
            binding.bind_input(INPUT_NAME, "cuda", self.device_id, np.uint8, batch.shape, int(batch.data.ptr))
            keep.append(batch)
        else:
            stacked = np.ascontiguousarray(np.stack([self._to_host(image) for image in group]))
            binding.bind_cpu_input(INPUT_NAME, stacked)
            keep.append(stacked)
        out = self.context.empty((len(group), 3, self.crop, self.crop))
        binding.bind_output(OUTPUT_NAME, "cuda", self.device_id, np.uint8, out.shape, int(out.data.ptr))
        self.session.run_with_iobinding(binding)  # ends by waiting for the context's stream
        self.context.synchronize()  # the same stream: already done; explicit, it costs nothing
        return out

    def _to_host(self, image: Any) -> np.ndarray:
        if _on_device(image):
            import cupy

            return cupy.asnumpy(cupy.asarray(image))
        return np.asarray(image)
