"""The device check's headline figures from gpu.json's measurements (each with the TF32 setting of what
it compares), the test that decides whether the diagnosis follows, and the plots."""

from __future__ import annotations

from pathlib import Path
from typing import Any

# Images per request of `v2_pixels_x16`: one Python process answers each request with about a
# millisecond of CPU (the event loop; bench/README.md), which caps one-image requests far below a GPU.
STACKED = 16
SLOW_SERVICE = 0.5  # below this share of bare ORT, call 4 goes on to the diagnosis
# The runtime's figure: 16 images per request, which one front process does not cap (one image per
# request does, near 0.2 of bare on a fast GPU however right the runtime is; that figure compares the
# front-end modes instead).
TRIGGER_FIGURE = "service V2 pixels 16 per request / bare"


def runtime_is_slow(figures: Any) -> bool:
    """Whether the service reached less than half of bare ORT with 16 images per V2 request, or left no
    such figure (a check that stopped early says nothing good)."""
    if not isinstance(figures, dict):
        return True
    ratio = next((v for k, v in figures.items() if TRIGGER_FIGURE in k), None)
    return not isinstance(ratio, int | float) or ratio < SLOW_SERVICE


def figures(report: dict[str, Any]) -> dict[str, Any]:
    return figures_with_tf32(report)[0]


def figures_with_tf32(report: dict[str, Any]) -> tuple[dict[str, Any], dict[str, str | None]]:
    """The headline figures, and for each the TF32 setting of the sessions it compares (None on the
    CPU provider, which has no TF32). fp16 runs with TF32 on: TF32 changes only fp32 arithmetic, and
    `use_tf32=0` may also drop cuDNN's tensor-core engines for fp16 graphs."""
    bare = report.get("bare", {})
    service = report.get("service", {})
    cuda = report.get("device", "cuda") == "cuda"
    fig: dict[str, Any] = {}
    tf32: dict[str, str | None] = {}

    def add(name: str, value: Any, setting: str) -> None:
        fig[name] = value
        tf32[name] = setting if cuda else None

    def best(entries: dict[str, Any], model: str) -> float | None:
        entry = entries.get(model)
        return entry.get("best_images_per_s") if isinstance(entry, dict) else None

    def rate(decoder: str, key: str) -> float | None:
        runs = service.get(decoder)
        entry = runs.get(key) if isinstance(runs, dict) else None
        return entry.get("images_per_s") if isinstance(entry, dict) else None

    off = "off (fp32 service and bare)"
    for model in bare:
        reference = best(bare, model)
        pixels = rate("nvimgcodec", f"{model}/v2_pixels") or rate("pillow", f"{model}/v2_pixels")
        if reference and pixels:
            add(f"{model}: service V2 pixels / bare ORT best", pixels / reference, off)
        stacked = rate("nvimgcodec", f"{model}/v2_pixels_x16")
        if reference and stacked:
            add(f"{model}: service V2 pixels {STACKED} per request / bare ORT best", stacked / reference, off)
        streamed = rate("nvimgcodec", f"{model}/v2_stream_pixels")
        if reference and streamed:
            add(f"{model}: service V2 pixels on streams / bare ORT best", streamed / reference, off)
        split = rate("split", f"{model}/v2_pixels")
        if reference and split:
            add(f"{model}: service V2 pixels, front processes / bare ORT best", split / reference, off)
        split_streamed = rate("split", f"{model}/v2_stream_pixels")
        if reference and split_streamed:
            add(
                f"{model}: service V2 pixels on streams, front processes / bare ORT best",
                split_streamed / reference,
                off,
            )
        pillow, gpu = rate("pillow", f"{model}/http"), rate("nvimgcodec", f"{model}/http")
        if pillow and gpu:
            add(f"{model}: HTTP 1080p JPEG nvimgcodec / Pillow", gpu / pillow, "off (fp32 service)")
        if model.endswith("-fp16") and reference:
            fp32 = model.removesuffix("-fp16")
            if best(bare, fp32):
                add(
                    f"{model}: bare best fp16 / fp32 (TF32 off)",
                    reference / best(bare, fp32),
                    "fp16 on, fp32 off",
                )
            if best(report.get("bare_tf32", {}), fp32):
                add(
                    f"{model}: bare best fp16 / fp32 (TF32 on)",
                    reference / best(report["bare_tf32"], fp32),
                    "on (both)",
                )
        alternating = bare[model].get("alternating") if isinstance(bare[model], dict) else None
        if alternating:
            add(
                f"{model}: bare, two batch sizes taking turns / the same sizes one at a time",
                alternating["ratio"],
                bare[model].get("tf32") and "on" or "off",
            )
        on = best(report.get("bare_tf32", {}), model)
        if reference and on:
            add(f"{model}: bare best TF32 on / off", on / reference, "on / off")
    for model, entry in report.get("memory", {}).items():
        if isinstance(entry, dict):
            add(f"{model}: memory growth after warm-up (MiB)", entry["growth_mib"], "off")
    for model, variants in report.get("runtime_options", {}).items():
        for name, entry in variants.items() if isinstance(variants, dict) else ():
            if isinstance(entry, dict) and entry.get("gpu_mib") is not None:
                add(f"{model}: GPU memory with {name} (MiB)", entry["gpu_mib"], "off")
    return fig, tf32


def plots(report: dict[str, Any], out: Path) -> list[str]:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except Exception:
        return []
    written = []
    bare = {m: r for m, r in report.get("bare", {}).items() if isinstance(r, dict)}
    if bare:
        fig, ax = plt.subplots(figsize=(8, 5))
        for model, entry in bare.items():
            points = [(int(b), v["images_per_s"]) for b, v in entry["batches"].items() if isinstance(v, dict)]
            if points:
                ax.plot(*zip(*points, strict=True), marker="o", label=model)
        ax.set(xscale="log", yscale="log", xlabel="batch size", ylabel="images/s", title="bare ONNX Runtime")
        ax.legend()
        fig.savefig(out / "gpu-bare.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("gpu-bare.png")
    service = report.get("service", {})
    bars = [
        (f"{key} [{decoder}]", value["images_per_s"])
        for decoder, runs in service.items() if isinstance(runs, dict)
        for key, value in runs.items() if isinstance(value, dict) and "images_per_s" in value
    ]  # fmt: skip
    if bars:
        fig, ax = plt.subplots(figsize=(9, 0.35 * len(bars) + 1.5))
        ax.barh([b[0] for b in bars], [b[1] for b in bars])
        ax.set(xlabel="images/s at saturation", title="effnet-serve")
        fig.savefig(out / "gpu-service.png", dpi=110, bbox_inches="tight")
        plt.close(fig)
        written.append("gpu-service.png")
    return written
