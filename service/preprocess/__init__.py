"""Encoded bytes -> the uint8 rows a model's graph takes: format checks and limits, the Pillow path,
the resize graph, GPU JPEG decoding, and the backends that combine them per model version."""
