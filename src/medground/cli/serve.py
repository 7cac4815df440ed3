"""``medground serve``: the web app (upload a radiograph, ground phrases or a whole report)."""

from __future__ import annotations

import argparse

from medground.cli.common import Parents, at_least_1, command, config_of, model_of


def add(commands: argparse._SubParsersAction, parents: Parents) -> None:
    """Register ``serve`` on ``commands``, with the shared flags of ``parents``."""
    from medground.app.limits import MAX_PHRASES, MAX_UPLOAD_MB

    serve = command(commands, "serve", run_serve, parents=(parents["model"],), description=(
        "Serve a web page (Gradio) where a user uploads a PNG, JPEG or DICOM radiograph, types phrases or "
        "pastes a report, and sees the findings' heatmaps, masks and boxes (one colour each), a table of boxes and "
        "scores, and downloads the JSON and the maps. The model is loaded once; queries are queued and run one at a "
        f"time, at most {MAX_PHRASES} phrases each. Offline: no CDN assets, analytics off; uploads stay in memory "
        "and in a temporary folder deleted on exit, each visitor's results in a folder of their own, deleted when "
        "the visitor leaves. Needs medground[app]."))
    serve.add_argument("--host", default="127.0.0.1", help="address to listen on (default: 127.0.0.1, this "
                       "machine only; 0.0.0.0 opens it to the network)")
    serve.add_argument("--port", type=at_least_1, default=7860, help="port (default: 7860)")
    serve.add_argument("--share", action="store_true", help="also open a public gradio.live link (off by default)")
    serve.add_argument("--max-upload-mb", type=at_least_1, default=MAX_UPLOAD_MB,
                       help=f"largest upload in MB (default: {MAX_UPLOAD_MB})")


def run_serve(args: argparse.Namespace) -> int:
    """The web app: upload a radiograph, ground phrases or a whole report."""
    from medground.app.server import check_can_serve, serve
    from medground.grounder import Grounder

    check_can_serve(args.host, args.port)
    model = model_of(args)
    grounder = Grounder(model, config_of(args, model), progress=True, precision=args.precision)
    serve(grounder, {"model": str(args.model), "preset": args.preset}, host=args.host, port=args.port,
          share=args.share, max_upload_mb=args.max_upload_mb)  # ends the process when the server stops
