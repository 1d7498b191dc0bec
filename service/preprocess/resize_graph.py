"""Resize and centre-crop as a small ONNX graph built from a model's preprocessing spec.

Input `image`: uint8 (H, W, 3), RGB, any size. Output `pixels`: uint8 (3, crop, crop).
Geometry is torchvision's ``Resize(resize_size)`` + ``CenterCrop(crop_size)`` on a PIL image, as
service/preprocess/images.py documents: the shorter side becomes resize_size, the longer one
``int(resize_size * long / short)``; crop offsets ``round((size - crop) / 2)``, half to even. The
resampling is ONNX ``Resize`` with antialiasing (a kernel widened by the downscale factor, as
Pillow does), half-pixel centres, Pillow's bicubic coefficient -0.5 and its border handling
(weights outside the image dropped and the rest renormalised: ``exclude_outside``).

The same graph runs on the CPU provider (tests compare it with the Pillow path) and on CUDA, where
it reads the decoded image from device memory and its output stays there. Built with the `onnx`
helper API at model load: no files, no torch.
"""

from __future__ import annotations

from typing import Any, Final

import onnx
from onnx import TensorProto, helper

from service.preprocess.images import PreprocessSpec
from service.runtime.providers import CPU, CUDA

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
        # (H, W, 3) -> (1, 3, H, W) float
        helper.make_node("Transpose", [INPUT_NAME], ["chw"], perm=[2, 0, 1]),
        helper.make_node("Unsqueeze", ["chw", "axis0"], ["nchw_u8"]),
        helper.make_node("Cast", ["nchw_u8"], ["nchw"], to=TensorProto.FLOAT),
        # Output size, in integers: the shorter side -> size, the longer -> (size * long) // short.
        helper.make_node("Shape", [INPUT_NAME], ["hw"], start=0, end=2),
        helper.make_node("Split", ["hw"], ["h", "w"], axis=0, num_outputs=2),
        helper.make_node("LessOrEqual", ["w", "h"], ["portrait"]),
        helper.make_node("Mul", ["h", "size"], ["size_h"]),
        helper.make_node("Div", ["size_h", "w"], ["scaled_h"]),
        helper.make_node("Mul", ["w", "size"], ["size_w"]),
        helper.make_node("Div", ["size_w", "h"], ["scaled_w"]),
        helper.make_node("Where", ["portrait", "scaled_h", "size"], ["out_h"]),
        helper.make_node("Where", ["portrait", "size", "scaled_w"], ["out_w"]),
        helper.make_node("Concat", ["one_three", "out_h", "out_w"], ["sizes"], axis=0),
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
        helper.make_node("Cast", ["clipped"], ["cast_u8"], to=TensorProto.UINT8),
        helper.make_node("Squeeze", ["cast_u8", "axis0"], [OUTPUT_NAME]),
    ]
    initializers = [
        _const("axis0", [0]),
        _const("size", [size]),
        _const("crop", [crop]),
        _const("one_three", [1, 3]),
        _const("axes_hw", [2, 3]),
        helper.make_tensor("half", TensorProto.FLOAT, [], [0.5]),
        helper.make_tensor("zero", TensorProto.FLOAT, [], [0.0]),
        helper.make_tensor("max255", TensorProto.FLOAT, [], [255.0]),
    ]
    graph = helper.make_graph(
        nodes,
        f"resize{size}_crop{crop}_{spec.interpolation}",
        [helper.make_tensor_value_info(INPUT_NAME, TensorProto.UINT8, ["H", "W", 3])],
        [helper.make_tensor_value_info(OUTPUT_NAME, TensorProto.UINT8, [3, crop, crop])],
        initializer=initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)], ir_version=10)
    onnx.checker.check_model(model, full_check=True)
    return model


class ResizeGraphRunner:
    """The resize graph in an ONNX Runtime session, on the CPU or the model's CUDA device.

    `__call__(image)` takes (H, W, 3) uint8 RGB, host (numpy) or device (`__cuda_array_interface__`)
    and returns (3, crop, crop) uint8: a numpy array on the CPU provider; a CuPy device array on
    CUDA, so the pixels go from the decoder to the model's batch without visiting the host.
    Thread-safe: each call binds its own buffers.
    """

    def __init__(self, spec: PreprocessSpec, device: str = "cpu", device_id: int = 0) -> None:
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.intra_op_num_threads = 1  # it runs in the preprocessing pool: one image per thread
        options.inter_op_num_threads = 1
        options.add_session_config_entry("session.intra_op.allow_spinning", "0")
        options.log_severity_level = 3
        providers: list[Any] = [CPU]
        if device == "cuda":
            providers.insert(0, (CUDA, {"device_id": device_id}))
        self.session = ort.InferenceSession(
            build_resize_crop_graph(spec).SerializeToString(), sess_options=options, providers=providers
        )
        self.device = "cuda" if self.session.get_providers()[0] == CUDA else "cpu"
        self.device_id = device_id
        self.crop = spec.crop_size

    def __call__(self, image: Any) -> Any:
        if self.device == "cpu":
            if hasattr(image, "__cuda_array_interface__"):
                import cupy

                image = cupy.asnumpy(cupy.asarray(image))
            return self.session.run([OUTPUT_NAME], {INPUT_NAME: image})[0]
        return self._run_on_device(image)

    def _run_on_device(self, image: Any) -> Any:
        import cupy
        import numpy as np

        binding = self.session.io_binding()
        if hasattr(image, "__cuda_array_interface__"):
            view = cupy.asarray(image)
            source = cupy.ascontiguousarray(view)  # decoders may pad rows (a pitch)
            if source is not view:
                cupy.cuda.get_current_stream().synchronize()  # ORT runs on a stream of its own
            binding.bind_input(INPUT_NAME, "cuda", self.device_id, np.uint8, source.shape, source.data.ptr)
        else:
            source = np.ascontiguousarray(image)
            binding.bind_cpu_input(INPUT_NAME, source)
        out = cupy.empty((3, self.crop, self.crop), dtype=cupy.uint8)
        binding.bind_output(OUTPUT_NAME, "cuda", self.device_id, np.uint8, out.shape, out.data.ptr)
        self.session.run_with_iobinding(binding)  # returns once the outputs are ready
        return out
