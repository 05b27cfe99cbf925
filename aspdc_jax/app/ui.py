"""The Gradio page and server of the web app; the work is done by :mod:`aspdc_jax.app.handlers`.

`build_ui` lays out the page (elements the browser test finds by id: ``photos``, ``run``,
``messages``, ``downloads``) and wires three events, all in one queue that runs one request
at a time (``concurrency_id="model"``): the Deblur button, the choice of which result to
show, and the API endpoint ``/deblur`` (one image file in, its PNG out). `serve` loads the
weights and runs the server.
"""

from __future__ import annotations

import argparse
import ipaddress
import os
import signal
import sys
from pathlib import Path
from typing import Any

from aspdc_jax.app.handlers import AppError, Batch, DeblurApp, Options, PhotoResult

__all__ = ["build_ui", "card_markdown", "serve"]

_INTRO = (
    "# ASPDC motion deblurring\n"
    "Drop one or several blurred photos (or paste one), press **Deblur**, compare before and after, "
    "and download the full-resolution PNGs. Each photo is deblurred exactly as "
    "`python -m aspdc_jax.deblur` does it (same PNG, byte for byte). Photos up to {mp:g} megapixels; "
    "those larger than the tile size run in overlapping tiles."
)


def card_markdown(app: DeblurApp) -> str:
    """The model card as a Markdown list."""
    names = {"weights": "Weights", "ema": "EMA", "step": "Step", "parameters": "Parameters", "device": "Device"}
    rows = "\n".join(f"- **{names.get(k, k)}:** {v}" for k, v in app.model_card().items())
    return f"### Model\n{rows}"


def _options(self_ensemble: bool, dtype: str, tile: Any) -> Options:
    try:
        tile_px = int(tile) if tile not in (None, "") else 0
    except (TypeError, ValueError) as err:
        raise AppError(f"options: the tile size must be a whole number of pixels, got {tile!r}") from err
    return Options(self_ensemble=bool(self_ensemble), dtype=str(dtype or "float32"), tile=tile_px)


def _view(result: dict[str, Any] | None) -> tuple[Any, Any, str]:
    """(slider value, zoom image, caption) of one result (a `_record`)."""
    if result is None:
        return None, None, ""
    return (result["before"], result["after"]), result["zoom"], result["caption"]


def _record(result: PhotoResult) -> dict[str, Any]:
    """What the page keeps of a result (paths and text only)."""
    x, y, side = result.zoom_box
    caption = f"**{result.name}**: zoomed crop (before | after) of the {side}x{side} pixels at x={x}, y={y}"
    caption += " where the output changed most."
    if result.metrics_text():
        caption += "\n\n" + result.metrics_text()
    return {
        "name": result.name,
        "before": str(result.before),
        "after": str(result.after),
        "zoom": str(result.zoom),
        "caption": caption,
        "output": str(result.output),
    }


def build_ui(app: DeblurApp) -> Any:
    """The page (a ``gradio.Blocks``) for ``app``; call ``.queue().launch()`` on it."""
    import gradio as gr  # noqa: PLC0415 (the optional 'app' extra)

    def on_deblur(
        photos: list[str] | None,
        pasted: str | None,
        reference: str | None,
        self_ensemble: bool,
        dtype: str,
        tile: Any,
        progress: gr.Progress = gr.Progress(),  # noqa: B008 (Gradio's way to ask for a progress bar)
    ) -> tuple[Any, ...]:
        paths = list(photos or []) + ([pasted] if pasted else [])
        try:
            options = _options(self_ensemble, dtype, tile)
        except AppError as err:
            batch = Batch([], [str(err)])
        else:

            def report(done: int, total: int, name: str) -> None:
                progress((done, total), desc=f"deblurring {name}" if name else "done", unit="photos")

            batch = app.deblur_files(paths, options, reference=reference, progress=report)
        records = [_record(r) for r in batch.results]
        names = [r["name"] for r in records]
        slider, zoom, caption = _view(records[0] if records else None)
        return (
            "\n".join(batch.messages),
            records,
            gr.Dropdown(choices=names, value=names[0] if names else None, visible=len(names) > 1),
            slider,
            zoom,
            caption,
            [r["output"] for r in records] or None,
        )

    def on_choice(name: str | None, records: list[dict[str, Any]]) -> tuple[Any, ...]:
        chosen = next((r for r in records or [] if r["name"] == name), None)
        return _view(chosen)

    def api_deblur(image: str | None) -> str:
        try:
            return str(app.deblur_one(image))
        except AppError as err:
            raise gr.Error(str(err), print_exception=False) from err

    with gr.Blocks(title="ASPDC deblurring", analytics_enabled=False, delete_cache=(3600, 3600)) as demo:
        gr.Markdown(_INTRO.format(mp=app.max_megapixels))
        if app.weights_error:
            gr.Markdown(f"**{app.weights_error}**", elem_id="weights-error")
        with gr.Row():
            with gr.Column(scale=2):
                photos = gr.File(
                    label="Blurred photos (drop one or several)",
                    file_count="multiple",
                    type="filepath",
                    elem_id="photos",
                )
                pasted = gr.Image(
                    label="...or paste one (clipboard) or upload one here",
                    sources=["clipboard", "upload"],
                    type="filepath",
                    image_mode=None,  # the uploaded file as it is, converted by read_image like the CLI
                    format="png",
                    height=160,
                    elem_id="pasted",
                )
                reference = gr.File(
                    label="Sharp reference (optional): PSNR/SSIM of input and output",
                    file_count="single",
                    type="filepath",
                    elem_id="reference",
                )
                with gr.Accordion("Options", open=False):
                    self_ensemble = gr.Checkbox(label="Self-ensemble x8 (8 flips/transposes averaged; 8x the time)")
                    dtype = gr.Radio(
                        ["float32", "bfloat16"], value="float32", label="Compute dtype (bfloat16 is for GPUs/TPUs)"
                    )
                    tile = gr.Number(
                        value=Options().tile,
                        precision=0,
                        label="Tile size in pixels (a multiple of 4, at least 128; 0 = never tile)",
                    )
                run = gr.Button("Deblur", variant="primary", elem_id="run")
                gr.Markdown(card_markdown(app), elem_id="card")
            with gr.Column(scale=3):
                messages = gr.Textbox(label="Messages", interactive=False, lines=2, max_lines=12, elem_id="messages")
                choice = gr.Dropdown(label="Result shown", choices=[], visible=False, elem_id="choice")
                slider = gr.ImageSlider(
                    label="Before / after (drag the handle)",
                    type="filepath",
                    format="png",
                    interactive=False,
                    buttons=["fullscreen"],
                    elem_id="slider",
                )
                zoom = gr.Image(
                    label="Where the output changed most (before | after)",
                    type="filepath",
                    format="png",
                    interactive=False,
                    buttons=["fullscreen"],
                    elem_id="zoom",
                )
                caption = gr.Markdown(elem_id="caption")
                downloads = gr.File(
                    label="Full-resolution PNGs (click a name to download)",
                    file_count="multiple",
                    interactive=False,
                    elem_id="downloads",
                )
        records = gr.State([])
        run.click(
            on_deblur,
            [photos, pasted, reference, self_ensemble, dtype, tile],
            [messages, records, choice, slider, zoom, caption, downloads],
            concurrency_id="model",
            api_visibility="undocumented",
        )
        choice.input(on_choice, [choice, records], [slider, zoom, caption], api_visibility="undocumented")
        with gr.Row(visible=False):
            api_in = gr.File(label="image", type="filepath")
            api_out = gr.File(label="png")
            api_button = gr.Button("deblur")
        api_button.click(
            api_deblur,
            api_in,
            api_out,
            api_name="deblur",
            api_description="Deblurs one image file as python -m aspdc_jax.deblur does; returns the PNG.",
            concurrency_id="model",
        )
    return demo


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def serve(args: argparse.Namespace) -> int:
    """Loads the weights (or says why there are none) and runs the server until Ctrl+C."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no telemetry requests
    try:
        import gradio  # noqa: PLC0415, F401 (the optional 'app' extra)
    except ImportError:
        print("error: the app needs Gradio: pip install -e '.[app]'", file=sys.stderr)
        return 2
    from aspdc_jax import inference  # noqa: PLC0415 (after the allocator, before JAX starts)
    from aspdc_jax.allocator import tune_malloc  # noqa: PLC0415 (only here)

    tune_malloc()
    inference.use_low_memory_cpu_scheduler()  # as the deblur CLI, so the XLA programs are its
    if args.max_megapixels <= 0:
        print(f"error: --max_megapixels must be > 0, got {args.max_megapixels:g}", file=sys.stderr)
        return 2
    app = DeblurApp(args.ckpt, max_megapixels=args.max_megapixels)
    if app.weights_error:
        print(f"note: {app.weights_error}", file=sys.stderr, flush=True)
    else:
        print(f"weights: {app.model_card()['weights']}", file=sys.stderr, flush=True)
    if not _is_loopback(args.host):
        print(f"note: --host {args.host} exposes the app beyond this machine", file=sys.stderr, flush=True)
    demo = build_ui(app)
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))  # `kill` cleans up like Ctrl+C
    try:
        demo.queue(default_concurrency_limit=1, max_size=64).launch(
            server_name=args.host,
            server_port=args.port,
            max_file_size=int(args.max_upload_mb * 1e6),
            allowed_paths=[str(Path(app.workdir))],
            footer_links=["api"],
            ssr_mode=False,
            share=False,
            show_error=True,
        )
    except (OSError, ValueError) as err:
        print(f"error: the server did not start on {args.host}:{args.port or '7860-7959'}: {err}", file=sys.stderr)
        return 2
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        app.close()
    return 0
