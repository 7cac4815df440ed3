"""Start the web app: one model, one queue worker, uploads in a temporary folder of this run, nothing sent out."""

from __future__ import annotations

import os
import signal
import socket
import tempfile
from pathlib import Path

from medground.app.limits import MAX_UPLOAD_MB
from medground.errors import ServeError
from medground.extras import EXTRAS, extra_missing
from medground.grounder import Grounder

QUEUE_SIZE = 64
"""Queries waiting beyond this are refused with a message (each takes one inversion at most)."""


def check_can_serve(host: str, port: int) -> None:
    """Fail before the model loads when the app's dependencies are missing or the address cannot be listened on."""
    if EXTRAS["app"].missing():
        raise extra_missing("app", "the web app")
    if not 0 < port < 65536:
        raise ServeError(f"--port must be between 1 and 65535, got {port}")
    with socket.socket() as probe:
        try:
            probe.bind((host, port))
        except OSError as exc:
            raise ServeError(f"cannot listen on {host}:{port}: {exc.strerror or exc} (choose another --port, or a "
                             "--host that is an address of this machine)") from None


def serve(grounder: Grounder, settings: dict[str, str], host: str = "127.0.0.1", port: int = 7860,
          share: bool = False, max_upload_mb: int = MAX_UPLOAD_MB) -> None:
    """Serve until interrupted (Ctrl-C or SIGTERM); the temporary folder with the uploads is deleted on the way out.

    Concurrent queries are queued and run one at a time on the shared ``grounder`` (its trajectory cache is not
    thread-safe, and one inversion already uses the machine).

    Args:
        grounder: the loaded model and resolved recipe every query runs on.
        settings: what each JSON download records about the model: ``model`` (its name or folder) and ``preset``.
        host: the address to listen on (``check_can_serve`` checks it before the model loads).
        port: the port to listen on.
        share: also open a public gradio.live tunnel; off unless asked, since it exposes the page to anyone.
        max_upload_mb: the largest upload in MB, refused by the upload itself before anything is decoded.

    Raises:
        ServeError: the address was taken after ``check_can_serve``.
    """
    signal.signal(signal.SIGTERM, _interrupt)
    with tempfile.TemporaryDirectory(prefix="medground-serve-") as workdir:
        # Gradio reads both when it is imported: uploads land in workdir, and no usage analytics are sent.
        os.environ["GRADIO_TEMP_DIR"] = workdir
        os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
        from medground.app.page import CSS, build_page
        from medground.app.session import Session
        from medground.reports.pipeline import report_pipeline

        report_pipeline()  # built now, so the first pasted report does not wait for it

        page = build_page(Session(grounder, Path(workdir), settings))
        page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
        try:
            page.launch(server_name=host, server_port=port, share=share, max_file_size=f"{max_upload_mb}mb",
                        ssr_mode=False, footer_links=[], run_history=False, mcp_server=False, pwa=False,
                        show_error=False, css=CSS, quiet=True, prevent_thread_lock=True)
        except OSError as exc:  # taken since check_can_serve
            raise ServeError(f"cannot serve on {host}:{port}: {exc}") from None
        print(f"medground: serving {settings['model']} on {page.local_url}"
              + (f" and {page.share_url}" if share else "") + " (Ctrl-C stops it)", flush=True)
        print(f"medground: uploads are kept in memory and in {workdir} (deleted when the server stops); "
              "nothing is sent anywhere", flush=True)
        page.block_thread()


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt
