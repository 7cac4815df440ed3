"""The page, laid out with Gradio Blocks around a Session. Import it through ``medground.app.server``."""

from __future__ import annotations

import functools
import logging
import re
from collections.abc import Callable
from typing import Any

import gradio as gr
from starlette.responses import PlainTextResponse
from starlette.types import ASGIApp, Receive, Scope, Send

from medground.app.limits import STATE_SECONDS, UPLOAD_CACHE
from medground.app.session import LAYERS, MODES, Answer, Session, boxes_table, status_html
from medground.errors import ImageError
from medground.viz import FindingsPicture, render_findings

CSS = """
.status { padding: 0.6em 0.8em; border-radius: 6px; }
.status.info { background: #eef4ff; color: #1a3a6b; }
.status.error { background: #fde8e8; color: #8a1111; font-weight: 600; }
table.boxes { border-collapse: collapse; font-size: 0.9em; }
table.boxes th, table.boxes td { border: 1px solid #ccc; padding: 2px 6px; text-align: left; }
.swatch { display: inline-block; width: 0.9em; height: 0.9em; margin-right: 0.3em; vertical-align: middle; }
"""
INTRO = """# medground
Zero-shot grounding of chest X-ray findings from a latent diffusion model's cross-attention during DDIM inversion
(Vilouras et al., arXiv 2404.12920). Upload a radiograph, type phrases (one per line) or paste a report
(negated findings are left out, uncertain ones flagged), then **Ground**. The image stays on this machine: it is
held in memory and in this server's temporary folder, deleted when the server stops, and sent nowhere."""
PLACEHOLDER = {"Phrases": "small left pleural effusion\ncardiomegaly",
               "Report": "FINDINGS: Small left pleural effusion. No pneumothorax. Heart size is mildly enlarged."}
INVERSION_PROGRESS = gr.Progress(track_tqdm=True)
"""Gradio finds a handler's progress bar by its default value; tracking tqdm shows the inversion's own steps."""
Outputs = tuple[str, Any, str, Any, Any]
"""status, overlay, boxes table, downloads, this visitor's last drawing (display size)."""

log = logging.getLogger(__name__)
URL = re.compile(r"[a-zA-Z][a-zA-Z0-9+.-]*://")
"""What Gradio would fetch from the network instead of reading a file of its own (``http://``, ``https://``)."""


def uploads_only(upload: gr.File) -> gr.File:
    """``upload`` refusing a URL in place of an uploaded file (which the API accepts, and Gradio would fetch from the
    network), so no visitor makes the server reach out. (A subclass would do, but Gradio writes a ``.pyi`` stub next
    to the module of every component class it sees defined.)"""
    move, move_async = upload.move_resource_to_block_cache, upload.async_move_resource_to_block_cache

    def move_upload(url_or_file_path: Any) -> str | None:
        _refuse_url(url_or_file_path)
        return move(url_or_file_path)

    async def move_upload_async(url_or_file_path: Any) -> str | None:
        _refuse_url(url_or_file_path)
        return await move_async(url_or_file_path)

    upload.move_resource_to_block_cache = move_upload  # type: ignore[method-assign]
    upload.async_move_resource_to_block_cache = move_upload_async  # type: ignore[method-assign]
    return upload


class LocalFilesOnly:
    """ASGI middleware: Gradio's file route (``/gradio_api/file=...``) serves files of this server only; given a URL
    it would fetch it from the network and pass it on, which this server never does."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            route = re.search(r"/file[=/](.*)", scope["path"], re.DOTALL)
            if route and URL.match(route.group(1).lstrip()):
                refusal = PlainTextResponse("this server serves its own files only; it fetches nothing from the "
                                            "network", status_code=403)
                await refusal(scope, receive, send)
                return
        await self.app(scope, receive, send)


def _refuse_url(url_or_file_path: Any) -> None:
    if url_or_file_path is not None and URL.match(str(url_or_file_path).lstrip()):
        raise ImageError("this server reads uploaded files only; it fetches nothing from the network")


def build_page(session: Session) -> gr.Blocks:
    """The Blocks of one server; event handlers close over ``session`` (the model is loaded once, before)."""
    with gr.Blocks(title="medground", analytics_enabled=False, delete_cache=UPLOAD_CACHE) as page:
        last = gr.State(None, time_to_live=STATE_SECONDS)
        gr.Markdown(INTRO)
        with gr.Row():
            with gr.Column(scale=2):
                upload = uploads_only(gr.File(label="Radiograph: PNG, JPEG or DICOM (drag and drop)",
                                              type="filepath", elem_id="upload"))
                mode = gr.Radio(list(MODES), value=MODES[0], label="Ground", elem_id="mode")
                text = gr.Textbox(label="Phrases, one per line", lines=6, placeholder=PLACEHOLDER[MODES[0]],
                                  elem_id="text")
                layers = gr.CheckboxGroup(list(LAYERS), value=list(LAYERS), label="Show", elem_id="layers")
                run = gr.Button("Ground", variant="primary", elem_id="ground")
            with gr.Column(scale=3):
                status = gr.HTML(elem_id="status")
                overlay = gr.Image(label="Findings", type="numpy", format="png", interactive=False,
                                   buttons=["download", "fullscreen"], elem_id="overlay")
                table = gr.HTML(elem_id="boxes")
                downloads = gr.File(label="Downloads: JSON, overlay (.png), heatmaps (.npy)", file_count="multiple",
                                    interactive=False, elem_id="downloads")
        outputs = [status, overlay, table, downloads, last]

        @_in_page
        def show_upload(path: str | None, shown: list[str]) -> Outputs:
            return _outputs(session.preview(path), shown)

        @_in_page
        def ground(path: str | None, chosen: str, typed: str, shown: list[str], request: gr.Request,
                   progress: gr.Progress = INVERSION_PROGRESS) -> Outputs:
            return _outputs(session.answer(path, chosen, typed, lambda f, d: progress(f, desc=d),
                                           visitor=request.session_hash), shown)

        def redraw(picture: FindingsPicture | None, shown: list[str]) -> Any:
            return _overlay(picture, shown) if picture is not None else gr.skip()

        def leave(request: gr.Request) -> None:
            session.forget(request.session_hash)

        def relabel(chosen: str) -> gr.Textbox:
            label = "Phrases, one per line" if chosen == "Phrases" else "Report (FINDINGS / IMPRESSION)"
            return gr.Textbox(label=label, placeholder=PLACEHOLDER[chosen])

        upload.change(show_upload, [upload, layers], outputs)
        run.click(ground, [upload, mode, text, layers], outputs, show_progress_on=overlay)
        layers.change(redraw, [last, layers], overlay)
        mode.change(relabel, mode, text)
        page.unload(leave)
    return page


def _outputs(answer: Answer, shown: list[str]) -> Outputs:
    files = [str(path) for path in answer.files] or None
    picture = answer.picture
    return status_html(answer), _overlay(picture, shown), boxes_table(answer.grounding), files, picture


def _overlay(picture: FindingsPicture | None, shown: list[str]) -> Any:
    if picture is None:
        return None
    return render_findings(picture, *(layer in shown for layer in LAYERS))


def _in_page(handler: Callable[..., Outputs]) -> Callable[..., Outputs]:
    """Anything unforeseen becomes a message in the page (the traceback goes to the server's log only)."""

    @functools.wraps(handler)
    def guarded(*args: Any, **kwargs: Any) -> Outputs:
        try:
            return handler(*args, **kwargs)
        except Exception as exc:  # the page must never show a traceback
            log.exception("query failed")
            answer = Answer(f"unexpected {type(exc).__name__}: {exc} (details in the server log)", error=True)
            return status_html(answer), None, "", None, None

    return guarded
