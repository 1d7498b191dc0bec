"""A model folder's own settings: `config.json` (version policy, batching overrides) and, for a
cascade, `cascade.json` (its stages and exit confidences). Schemas and validated reading only."""

from __future__ import annotations

from pathlib import Path
from typing import Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from service.lifecycle.files import ModelLoadError, first_error
from service.model_spec import MODEL_NAME_PATTERN
from service.settings import MAX_INSTANCES

CONFIG_FILE = "config.json"
CASCADE_FILE = "cascade.json"
_Parsed = TypeVar("_Parsed", bound=BaseModel)


class _Strict(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class VersionPolicy(_Strict):
    """Which versions on disk are served (Triton's version_policy): exactly one of the three."""

    latest: int | None = Field(default=None, ge=1)
    all: bool | None = None
    specific: tuple[int, ...] | None = None

    @model_validator(mode="after")
    def _one(self) -> VersionPolicy:
        chosen = [k for k in ("latest", "all", "specific") if getattr(self, k) is not None]
        if len(chosen) != 1:
            raise ValueError("give exactly one of 'latest', 'all' or 'specific'")
        if self.all is False:
            raise ValueError("'all' must be true")
        if self.specific is not None and (not self.specific or min(self.specific) < 1):
            raise ValueError("'specific' must list version numbers >= 1")
        return self

    def select(self, versions: list[int]) -> list[int]:
        """The versions to serve, ascending."""
        ordered = sorted(versions)
        if self.all:
            return ordered
        if self.specific is not None:
            return [v for v in ordered if v in self.specific]
        assert self.latest is not None
        return ordered[-self.latest :]


LATEST_ONE = VersionPolicy(latest=1)


class ModelConfig(_Strict):
    """`<name>/config.json`: per-model overrides of the global settings."""

    version_policy: VersionPolicy = LATEST_ONE
    max_batch_size: int | None = Field(default=None, ge=1, le=4096)
    instances: int | None = Field(default=None, ge=1, le=MAX_INSTANCES)
    max_queue_delay_ms: float | None = Field(default=None, ge=0, le=60_000)
    # Keep answers in the response cache (service/core/answers.py); the cache's size is global.
    response_cache: bool = False
    # The Open Inference Protocol inputs it takes (default both). One only makes neither optional in its
    # Triton configuration, which perf_analyzer's shared memory mode needs (it sends every input).
    v2_inputs: tuple[Literal["pixels", "image"], ...] = Field(default=("pixels", "image"), min_length=1)


DEFAULT_CONFIG = ModelConfig()


class CascadeStage(_Strict):
    model: str = Field(pattern=MODEL_NAME_PATTERN.pattern)
    # Answer here when the top probability reaches this; the last stage always answers.
    exit_confidence: float | None = Field(default=None, gt=0.0, le=1.0)


class CascadeSpec(_Strict):
    """`<name>/cascade.json`: run the stages in order; an image leaves at the first stage whose top
    probability reaches its `exit_confidence` (the maximum-softmax exit rule)."""

    stages: tuple[CascadeStage, ...] = Field(min_length=2, max_length=8)
    description: str | None = None

    @model_validator(mode="after")
    def _thresholds(self) -> CascadeSpec:
        *early, last = self.stages
        if any(stage.exit_confidence is None for stage in early):
            raise ValueError("every stage but the last needs an exit_confidence")
        if last.exit_confidence is not None:
            raise ValueError("the last stage always answers: give it no exit_confidence")
        names = [stage.model for stage in self.stages]
        if len(set(names)) != len(names):
            raise ValueError("a model may appear only once in a cascade")
        return self


def read_cascade(model_dir: Path) -> CascadeSpec:
    return _read_json(model_dir / CASCADE_FILE, CascadeSpec)


def read_config(model_dir: Path) -> ModelConfig:
    path = model_dir / CONFIG_FILE
    return _read_json(path, ModelConfig) if path.exists() else DEFAULT_CONFIG


def _read_json(path: Path, model: type[_Parsed]) -> _Parsed:
    """A validated JSON file; ModelLoadError saying which file and what is wrong with it."""
    try:
        return model.model_validate_json(path.read_bytes())
    except ValidationError as exc:
        raise ModelLoadError(f"{path} is invalid: {first_error(exc)}") from exc
    except OSError as exc:
        raise ModelLoadError(f"{path} cannot be read: {exc.strerror or exc}") from exc
