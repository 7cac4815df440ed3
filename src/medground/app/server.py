"""Start the web app: one model, one queue worker, uploads in a temporary folder of this run, nothing sent out."""

from __future__ import annotations

import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any, NoReturn

from medground.app.limits import MAX_UPLOAD_MB, STOP_WAIT_S, STRAY_FILES
from medground.errors import ServeError
from medground.extras import EXTRAS, extra_missing
from medground.grounder import Grounder

if TYPE_CHECKING:
    from medground.app.session import Session

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
          share: bool = False, max_upload_mb: int = MAX_UPLOAD_MB) -> NoReturn:
    """Serve until interrupted (Ctrl-C or SIGTERM), then end the process: the temporary folder with the uploads is
    deleted on the way out, once the running query is over (it is given ``STOP_WAIT_S``).

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
    workdir = Path(tempfile.mkdtemp(prefix="medground-serve-"))
    finished = False
    try:
        finished = _serve_in(workdir, grounder, settings, host, port, share, max_upload_mb)
    finally:
        _delete(workdir)
    if not finished:
        print("medground: stopped without waiting any longer for the running query", flush=True)
    # Leave at once, with the folder deleted: the interpreter's own exit would tear down Gradio's threads and torch's
    # native ones while some may still be alive (a query's thread at the deadline; under load, even after a query
    # ended, torch's pool aborted the exit with "terminate called without an active exception").
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)


def _serve_in(workdir: Path, grounder: Grounder, settings: dict[str, str], host: str, port: int, share: bool,
              max_upload_mb: int) -> bool:
    """``serve`` with its temporary folder made; True once stopped with no query left running."""
    # Gradio reads both when it is imported: uploads land in workdir, and no usage analytics are sent.
    os.environ["GRADIO_TEMP_DIR"] = str(workdir)
    os.environ["GRADIO_ANALYTICS_ENABLED"] = "False"
    from starlette.middleware import Middleware

    from medground.app.page import CSS, LocalFilesOnly, build_page
    from medground.app.session import Session
    from medground.reports.pipeline import report_pipeline

    report_pipeline()  # built now, so the first pasted report does not wait for it

    session = Session(grounder, workdir, settings)
    page = build_page(session)
    page.queue(default_concurrency_limit=1, max_size=QUEUE_SIZE)
    try:
        page.launch(server_name=host, server_port=port, share=share, max_file_size=f"{max_upload_mb}mb",
                    ssr_mode=False, footer_links=[], run_history=False, mcp_server=False, pwa=False,
                    show_error=False, css=CSS, quiet=True, prevent_thread_lock=True,
                    app_kwargs={"middleware": [Middleware(LocalFilesOnly)]})
    except OSError as exc:  # taken since check_can_serve
        raise ServeError(f"cannot serve on {host}:{port}: {exc}") from None
    print(f"medground: serving {settings['model']} on {page.local_url}"
          + (f" and {page.share_url}" if share else "") + " (Ctrl-C stops it)", flush=True)
    print(f"medground: uploads are kept in memory and in {workdir} (deleted when the server stops); "
          "nothing is sent anywhere", flush=True)
    stopped = threading.Event()
    threading.Thread(target=_sweep_until, args=(stopped, workdir, *STRAY_FILES), daemon=True).start()
    try:
        page.block_thread()
    finally:
        stopped.set()
        finished = _stop(page, session)
    return finished


def _stop(page: Any, session: Session) -> bool:
    """After Ctrl-C or SIGTERM: no query starts any more; wait for the running one and for Gradio to finish it (which
    writes its overlay in the temporary folder), ``STOP_WAIT_S`` at most, before the folder is deleted. Its visitor
    gets no answer: the server is going away, and the answer's files with it.

    Returns:
        False if the query was still running at the deadline (or Ctrl-C came again).
    """
    deadline = time.monotonic() + STOP_WAIT_S
    try:
        page.close(verbose=False)  # the queue starts and sends nothing more; open pages stop their heartbeats
        if not session.stop(max(0.0, deadline - time.monotonic())):
            return False
        while page._queue.get_active_worker_count() and time.monotonic() < deadline:
            time.sleep(0.05)  # Gradio still writing the answer
        return not page._queue.get_active_worker_count()
    except KeyboardInterrupt:  # asked again while waiting: stop now
        return False


def _delete(workdir: Path) -> None:
    """Delete the temporary folder whole: a second Ctrl-C or SIGTERM (``timeout`` and a process manager may both
    send one) must not stop the deletion half-way."""
    handlers = signal.signal(signal.SIGINT, signal.SIG_IGN), signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        shutil.rmtree(workdir)
    except OSError as exc:
        print(f"medground: could not delete {workdir}: {exc.strerror or exc}", file=sys.stderr, flush=True)
    finally:
        signal.signal(signal.SIGINT, handlers[0])
        signal.signal(signal.SIGTERM, handlers[1])


def sweep_stray_files(workdir: Path, older_than: float) -> list[Path]:
    """Delete the files lying directly in ``workdir`` that nothing wrote to for ``older_than`` seconds.

    Gradio keeps every upload and every file it serves in a sub-folder; directly in its folder it leaves only the
    partial upload of a client that went away and the empty file its File component makes on every query, neither
    ever read again (see ``limits.STRAY_FILES``). An upload still arriving is written to, so it is never that old.

    Returns:
        The files deleted.
    """
    deleted = []
    now = time.time()
    with os.scandir(workdir) as entries:
        for entry in entries:
            try:
                stale = now - entry.stat(follow_symlinks=False).st_mtime > older_than
                if stale and entry.is_file(follow_symlinks=False):
                    os.unlink(entry.path)
                    deleted.append(Path(entry.path))
            except FileNotFoundError:  # renamed into its folder, or deleted, meanwhile
                continue
    return deleted


def _sweep_until(stopped: threading.Event, workdir: Path, every: float, older_than: float) -> None:
    while not stopped.wait(every):
        try:
            sweep_stray_files(workdir, older_than)
        except OSError:  # the folder is being deleted
            return


def _interrupt(_signal: int, _frame: object) -> None:
    raise KeyboardInterrupt
