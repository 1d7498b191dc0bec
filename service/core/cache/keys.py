"""Keys of the response cache: what an answer depends on, hashed.

A key covers the model that ran (name, which already says fp16 or int8, version, the graph's sha256
from model.json, the execution provider, the preprocessing backend for encoded images, and the model's
config.json), the request's output options, and a strong hash of the input: the encoded bytes of an
image (so a hit skips decoding and resizing too) or the bytes of a `pixels` row. A new version, a
replaced graph or a changed config.json therefore never finds an old answer, on any replica.

Answers are stored as the model's whole output rows (every class's probability), so `top_k` is applied
after the cache and is not part of the key: one stored row serves every top_k. Options that change
what the model computes (extra outputs) are; a target option this module does not know makes the
request uncacheable rather than risk answering it from a key that ignores it.
"""

from __future__ import annotations

import dataclasses
import hashlib
from collections.abc import Iterable

import numpy as np

from service.core.target import Target
from service.lifecycle.records import ModelEntry

KEY_PREFIX = "effnet:answer:v1:"
# Target fields that do not change a model's output rows: they pick the model or shape the answer
# from its rows (top_k), or order the work (priority).
_NOT_OUTPUT_OPTIONS = frozenset(
    {"name", "kind", "record", "version", "spec", "top_k", "budget_ms", "priority"}
)
# Output options the cache keys on (none: every stored row holds logits and probabilities only).
# Requests that ask for extra outputs (features, maps) bypass the cache (Engine._run_options).
KNOWN_OUTPUT_OPTIONS: frozenset[str] = frozenset()

Options = tuple[tuple[str, str], ...]


def output_options(target: Target) -> Options | None:
    """The target's options that change what the model outputs, as key material; None when it asks for
    something this cache does not know (then it is neither looked up nor stored)."""
    found: list[tuple[str, str]] = []
    for field in dataclasses.fields(target):
        if field.name in _NOT_OUTPUT_OPTIONS:
            continue
        value = getattr(target, field.name)
        if field.default is not dataclasses.MISSING and value == field.default:
            continue  # not asked for
        if field.name not in KNOWN_OUTPUT_OPTIONS:
            return None
        found.append((field.name, repr(value)))
    return tuple(sorted(found))


def model_identity(entry: ModelEntry, input_kind: str) -> bytes:
    """Everything about the model version that an answer depends on, for inputs of `input_kind`."""
    spec = entry.spec
    config = entry.config.model_dump_json() if entry.config is not None else ""
    backend = entry.backend.name if entry.backend is not None and input_kind == "image" else ""
    parts = (
        entry.name,
        str(entry.version),
        spec.onnx_sha256 if spec is not None else "",
        entry.provider or "",
        input_kind,
        backend,
        config,
    )
    return "\x1f".join(parts).encode()


def keys_for(identity: bytes, options: Options, contents: Iterable[bytes | np.ndarray]) -> list[str]:
    """One key per input: blake2b over the model identity, the options and the input's bytes."""
    prefix = hashlib.blake2b(identity + b"\x1e" + repr(options).encode(), digest_size=16).digest()
    keys = []
    for content in contents:
        digest = hashlib.blake2b(prefix, digest_size=32)
        if isinstance(content, np.ndarray):
            digest.update(f"{content.dtype}{content.shape}".encode())
            digest.update(np.ascontiguousarray(content).data)
        else:
            digest.update(content)
        keys.append(KEY_PREFIX + digest.hexdigest())
    return keys
