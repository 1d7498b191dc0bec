"""Export-time tooling: turns EfficientNet checkpoints into the ONNX model repository the service reads.

Everything here may import torch; nothing under `service/` may import this package.
Entry point: `python -m models.export --help`.
"""
