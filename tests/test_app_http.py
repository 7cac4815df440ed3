"""The web app's HTTP surface, attacked with plain HTTP (no browser): ``medground serve`` in a subprocess whose
temporary folder lies under the test's own folder, so what it writes can be checked on disk.

Uploads over the limit, active content, traversal names; files outside the upload folder through every file route
of the installed Gradio (``/gradio_api/file=``, ``/gradio_api/file/``, static routes, proxy) and as event inputs;
URLs the server would fetch from the network (every host name the server resolves is recorded); the files Gradio
leaves in its folder; SIGTERM during a query."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import urllib.parse
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from PIL import Image

from medground.app.limits import STOP_WAIT_S, STRAY_FILES
from medground.datasets.phantoms import generate_phantom

UPLOAD_LIMIT_MB = 1
START_TIMEOUT_S = 300
QUERY_TIMEOUT_S = 300
SECRET = f"medground-secret-{uuid.uuid4().hex}"
"""Written in every file the server must not give away."""
PROBE_HOST = "medground-probe.invalid"
"""Host names the tests give the server as URLs; ``.invalid`` never resolves, and nothing may even try."""
FN = {"show_upload": (0, 5), "ground": (1, 9)}
"""The page's events: (fn_index, trigger component id), as the page's own client sends them."""
RECORD_LOOKUPS = """
import os
import socket

_getaddrinfo = socket.getaddrinfo
_LOCAL = {"127.0.0.1", "localhost", "::1", "0.0.0.0", "", "None"}


def _recorded(host, *args, **kwargs):
    name = host.decode() if isinstance(host, bytes) else str(host)
    if name not in _LOCAL:
        with open(os.environ["MEDGROUND_TEST_LOOKUPS"], "a") as record:
            record.write(name + "\\n")
    return _getaddrinfo(host, *args, **kwargs)


socket.getaddrinfo = _recorded
"""


@dataclass
class Server:
    """A running ``medground serve`` and the folders around it."""

    process: subprocess.Popen
    port: int
    root: Path
    """Everything the test made: tmp (the server's TMPDIR), cwd (its working folder), outside (secrets)."""
    workdir: Path
    """The server's temporary folder: uploads, served files, each visitor's results."""
    log: Path
    lookups: Path

    @property
    def outside(self) -> Path:
        return self.root / "outside"


@pytest.fixture(scope="module")
def server(tmp_path_factory) -> Iterator[Server]:
    """``medground serve`` (toy model, 1 MB uploads) in TMPDIR root/tmp and working folder root/cwd."""
    root = tmp_path_factory.mktemp("http")
    running = _start(root, ["--max-upload-mb", str(UPLOAD_LIMIT_MB)])
    yield running
    if running.process.poll() is None:  # (the last test stops it)
        running.process.send_signal(signal.SIGTERM)
        assert running.process.wait(timeout=STOP_WAIT_S + 60) == 0
    assert not running.workdir.exists(), "the server's temporary folder with the uploads outlived it"


@pytest.fixture(scope="module")
def phantom_png() -> bytes:
    return _png(generate_phantom(19).image)


def test_uploads_over_the_limit_are_refused_and_leave_nothing(server):
    limit = UPLOAD_LIMIT_MB * 1024 * 1024
    before = _tree(server.workdir)
    status, body = _upload(server, b"big.png", b"\x89PNG" + b"\0" * limit)
    assert status == 413 and b"maximum allowed size" in body
    status, body = _upload_many(server, [(b"small.png", b"tiny"), (b"big.png", b"x" * (limit + 1))])
    assert status == 413  # the whole request: the small file is not kept either
    status, _ = _request(server, "POST", "/gradio_api/upload", b"x" * (2 * limit),
                         {"Content-Type": "application/octet-stream"})
    assert status == 400
    assert not _tree(server.workdir) - before, "a refused upload left files in the upload folder"
    status, body = _upload(server, b"limit.png", b"y" * (limit - 1))
    assert status == 200 and Path(json.loads(body)[0]).stat().st_size == limit - 1  # just under: taken


def test_upload_names_never_write_outside_the_upload_folder(server):
    folder = server.workdir / ("0" * 64)  # where Gradio puts an upload: a folder named by its hash
    relative = os.path.relpath(server.outside, folder)
    names = [
        f"{relative}/evil-1.png", f"{server.outside}/evil-2.png", relative.replace("/", "\\") + "\\evil-3.png",
        f"{relative}/evil-4\x00.png", f"evil-5\x00/{relative}/x.png", f"{relative}/%2e%2e%2fevil-6.png",
        "....//....//evil-7.png", "..", ".", "", "/", "x/", "a" * 400 + ".png", "\u202egnp.exe", ".bashrc",
        "con", "a\r\nContent-Type: text/html\r\n\r\n<script>", f"~/{relative}/evil-8.png", "../" * 40 + "evil-9.png",
    ]
    outside_before = _tree(server.root, skip=server.workdir)
    taken = 0
    for number, name in enumerate(names):
        data = f"{SECRET} upload {number}".encode()
        status, body = _upload(server, name.encode(), data)
        assert status in (200, 400), (name, status, body)
        if status == 200:
            (path,) = (Path(p) for p in json.loads(body))
            assert path.resolve().parent.parent == server.workdir.resolve(), (name, path)
            assert data in path.read_bytes()  # (the name with CR LF ends the part's headers early: its text leads)
            taken += 1
    assert taken >= len(names) - 3
    assert not _tree(server.root, skip=server.workdir) - outside_before, "an upload name wrote outside the folder"
    assert sorted(p.name for p in server.outside.iterdir()) == ["secret.png", "secret.txt"]


@pytest.mark.parametrize(("name", "data"), [
    ("page.html", b"<html><script>alert(1)</script></html>"),
    ("image.svg", b'<svg xmlns="http://www.w3.org/2000/svg"><script>alert(1)</script></svg>'),
    ("disguised.png", b"<html><body onload=alert(1)>not an image</body></html>"),
    ("program.png", b"\x7fELF\x02\x01\x01" + b"\0" * 9 + b"#!/bin/sh\necho owned\n"),
    ("page.xhtml", b'<html xmlns="http://www.w3.org/1999/xhtml"><script>alert(1)</script></html>'),
    ("code.js", b"alert(1)"),
    ("data.xml", b'<?xml version="1.0"?><x:script xmlns:x="http://www.w3.org/1999/xhtml">alert(1)</x:script>'),
    ("no-extension", b"<script>alert(1)</script>"),
])
def test_uploaded_active_content_is_refused_and_served_inert(server, name, data):
    status, body = _upload(server, name.encode(), data)
    assert status == 200
    (path,) = json.loads(body)
    assert Path(path).stat().st_mode & 0o111 == 0  # never executable
    status, headers, served = _get(server, "/gradio_api/file=" + urllib.parse.quote(path))
    kind = headers.get("content-type", "").split(";")[0].strip().lower()
    assert status == 200 and served == data
    assert kind not in {"text/html", "image/svg+xml", "application/xhtml+xml", "text/xml", "application/xml",
                        "text/javascript", "application/javascript"}
    if not kind.startswith("image/"):  # anything but a raster image is a download, never shown in the page
        assert kind == "application/octet-stream" and headers.get("content-disposition", "").startswith("attachment")
    status_line = _event(server, "show_upload", [_file(path), ["heatmap"]])["data"][0]
    assert f"Error: cannot read {name} as an image" in status_line
    assert str(server.workdir) not in status_line and "Traceback" not in status_line


def test_no_file_outside_the_upload_folder_is_served(server, phantom_png):
    workdir, outside = server.workdir, server.outside
    model_file = Path(__import__("medground").__file__).parent / "toy" / "model" / "model.json"
    (workdir / "link-secret.png").symlink_to(outside / "secret.png")
    (workdir / "link-root").symlink_to("/")
    # visitor A's answer: its downloads are served to whoever has their address; its folder is not listed
    path = json.loads(_upload(server, b"a.png", phantom_png)[1])[0]
    answer = _event(server, "ground", [_file(path), "Phrases", "cardiomegaly", ["boxes"]], visitor="visitor-a")
    downloads = [Path(f["path"]) for f in answer["data"][3]]
    assert downloads and all(d.parent.parent == workdir / "results" for d in downloads)
    assert _get(server, "/gradio_api/file=" + str(downloads[0]))[0] == 200
    secrets = {str(outside / "secret.txt"): SECRET.encode(), str(outside / "secret.png"): b"",
               str(server.root / "cwd" / "secret.txt"): SECRET.encode(), "/etc/passwd": b"root:",
               str(model_file): model_file.read_bytes()[:64], str(workdir / "link-secret.png"): b"",
               str(workdir / "link-root" / "etc" / "passwd"): b"root:"}
    folders = [str(workdir), str(workdir / "results"), str(downloads[0].parent), str(workdir / "link-root")]
    up = "/".join([".."] * len(workdir.parts))
    traversals = [f"{workdir}/../../outside/secret.txt", f"{workdir}/{up}/etc/passwd",
                  f"{workdir}/..%2f..%2foutside%2fsecret.txt", f"{workdir}/%2e%2e/%2e%2e/outside/secret.txt",
                  f"{workdir}/%252e%252e/%252e%252e/outside/secret.txt", f"{workdir}/..%5c..%5coutside%5csecret.txt",
                  f"{workdir}/%c0%ae%c0%ae/%c0%ae%c0%ae/outside/secret.txt", f"{downloads[0]}%00/../../../etc/passwd",
                  f"{downloads[0]}/../../../../outside/secret.txt", "//etc/passwd", "file:///etc/passwd",
                  "~root/../etc/passwd", "secret.txt", "../outside/secret.txt", "%2Fetc%2Fpasswd"]
    paths = []
    for target in [*secrets, *folders]:
        quoted = urllib.parse.quote(target)
        paths += [f"/gradio_api/file={quoted}", f"/gradio_api/file/{quoted}", f"/file={quoted}"]
    paths += [f"/gradio_api/file={t}" for t in traversals] + [f"/gradio_api/file/{t}" for t in traversals]
    paths += ["/static/../../../../../../etc/passwd", "/static/%2e%2e/%2e%2e/%2e%2e/%2e%2e/%2e%2e/etc/passwd",
              "/assets/..%2f..%2f..%2f..%2f..%2f..%2fetc%2fpasswd", "/svelte/..%2f..%2f..%2f..%2f..%2fetc%2fpasswd",
              "/gradio_api/custom_component/x/client/..%2f..%2f/passwd", "/favicon.ico/../../etc/passwd",
              f"/gradio_api/proxy=http://127.0.0.1:{server.port}/gradio_api/file={outside}/secret.txt",
              "/gradio_api/file=" + up + "/etc"]
    forbidden = [secret for secret in secrets.values() if secret] + [(outside / "secret.png").read_bytes()[:64]]
    served = []
    for route in paths:
        status, _, body = _get(server, route)
        if status == 200 or any(secret in body for secret in forbidden):
            served.append((route, status, body[:80]))
    assert not served, f"served files from outside the upload folder: {served}"

    # the same visitor's next answer replaces the previous one's folder
    _event(server, "ground", [_file(path), "Phrases", "pleural effusion", ["boxes"]], visitor="visitor-a")
    assert not downloads[0].exists() and _get(server, "/gradio_api/file=" + str(downloads[0]))[0] in (403, 404)


def test_event_inputs_name_uploaded_files_only(server):
    workdir, outside = server.workdir, server.outside
    (workdir / "input-link.png").symlink_to(outside / "secret.png")
    inputs = ["/etc/passwd", str(outside / "secret.png"), f"{workdir}/../../outside/secret.png",
              str(workdir / "input-link.png"), "../outside/secret.png", "secret.txt",
              f"{workdir}/{'/'.join(['..'] * len(workdir.parts))}{outside}/secret.png"]
    for path in inputs:
        result = _event(server, "show_upload", [_file(path), ["heatmap"]], allow_error=True)
        assert result.get("error", True) or "Error:" in result["data"][0], path
        assert "64x64" not in json.dumps(result), f"the server read {path} for a visitor"


def test_nothing_is_fetched_from_the_network(server):
    before = _tree(server.workdir)
    for route in ("/gradio_api/file=", "/gradio_api/file/", "/gradio_api/file= "):
        for url in (f"http://{PROBE_HOST}/x.png", f"https://{PROBE_HOST}/x.png",
                    urllib.parse.quote(f"http://{PROBE_HOST}/y.png", safe="")):
            status, _, body = _get(server, route + url)
            assert status in (403, 404), (route, url, status, body[:200])
    for url in (f"http://{PROBE_HOST}/z.png", f"https://{PROBE_HOST}/w.png",
                f"http://127.0.0.1:{server.port}/gradio_api/file={server.outside}/secret.png"):
        result = _event(server, "show_upload", [_file(url), ["heatmap"]], allow_error=True)
        assert result.get("error", True) or "Error:" in result["data"][0]
        assert "64x64" not in json.dumps(result)
    assert not _tree(server.workdir) - before  # Gradio makes a folder for a URL before fetching it
    lookups = server.lookups.read_text() if server.lookups.exists() else ""
    assert lookups == "", f"the server looked up host names: {sorted(set(lookups.split()))}"


def test_stray_files_in_the_upload_folder_are_swept(server, phantom_png):
    """A client that goes away mid-upload leaves Gradio's partial file, and every query leaves an empty one: both lie
    directly in the folder and are deleted once stale, while uploads (in their folders) are kept."""
    path = json.loads(_upload(server, b"kept.png", phantom_png)[1])[0]
    _event(server, "show_upload", [_file(path), ["heatmap"]])
    with socket.create_connection(("127.0.0.1", server.port), timeout=10) as client:
        head = (b'--XX\r\nContent-Disposition: form-data; name="files"; filename="gone.png"\r\n'
                b"Content-Type: image/png\r\n\r\n")
        client.sendall(b"POST /gradio_api/upload HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: multipart/form-data; "
                       b"boundary=XX\r\nContent-Length: 900000\r\n\r\n" + head + b"\x89PNG" + b"a" * 300_000)
        _until(lambda: any(f.stat().st_size >= 300_000 for f in _strays(server)), 30, "the partial upload")
    strays = _strays(server)
    assert len(strays) >= 2 and any(f.stat().st_size == 0 for f in strays)
    time.sleep(STRAY_FILES[0] + 1)
    assert all(f.exists() for f in strays), "a fresh file (maybe an upload still arriving) was swept"
    stale = time.time() - STRAY_FILES[1] - 10
    for stray in strays:
        os.utime(stray, (stale, stale))
    _until(lambda: not any(f.exists() for f in strays), STRAY_FILES[0] * 3 + 5, "the stale files' removal")
    assert Path(path).read_bytes() == phantom_png


def test_sigterm_during_a_query_deletes_the_folder_and_exits(tmp_path, phantom_png):
    """The query running when SIGTERM comes is given time to finish; then the folder is deleted (nothing written into
    it afterwards) and the process exits 0, well within the bound."""
    # a query of several seconds, outlasting Gradio's own 5 s wait for its server to close
    running = _start(tmp_path, ["--set", "inference_steps=100", "--set", "window_start=20", "--set", "window_stop=70"])
    try:
        path = json.loads(_upload(running, b"x.png", phantom_png)[1])[0]
        phrases = "\n".join(f"opacity number {n}" for n in range(10))
        messages = _join(running, "ground", [_file(path), "Phrases", phrases, ["boxes"]], "leaving")
        for message in messages:
            if message["msg"] == "progress" and message.get("progress_data"):
                break  # inside the inversion
            assert message["msg"] != "process_completed", "the query ended before SIGTERM"
        sent = time.monotonic()
        running.process.send_signal(signal.SIGTERM)
        code = running.process.wait(timeout=STOP_WAIT_S + 60)
        took = time.monotonic() - sent
    finally:
        if running.process.poll() is None:
            running.process.kill()
            running.process.wait(timeout=30)
    log = running.log.read_text()
    assert code == 0 and "terminate called" not in log and "Traceback" not in log, log[-2000:]
    assert took < STOP_WAIT_S + 30
    time.sleep(1)  # anything the query's thread might still write
    assert not running.workdir.exists()
    assert not list((tmp_path / "tmp").glob("medground-serve-*"))


def test_a_stopping_session_refuses_queries_and_never_recreates_its_folder(toy_model, tmp_path, phantom_png):
    """What the server's stop relies on, in this process: ``stop`` reports a running query, the folder deleted under
    a running query stays deleted, and once stopped no query runs."""
    from medground import Grounder
    from medground.app.session import Session

    image = tmp_path / "upload.png"
    image.write_bytes(phantom_png)
    session = Session(Grounder(toy_model, "paper"), tmp_path / "work", {"model": "toy", "preset": "paper"})
    raised: list[Exception] = []

    def query() -> None:
        try:
            session.answer(str(image), "Phrases", "\n".join(f"opacity number {n}" for n in range(10)))
        except Exception as exc:  # the thread's outcome, checked below
            raised.append(exc)

    running = threading.Thread(target=query)
    running.start()
    _until(session._running.locked, 30, "the query to start")
    assert session.stop(0.01) is False  # still running
    shutil.rmtree(tmp_path / "work")
    running.join(timeout=QUERY_TIMEOUT_S)
    assert not running.is_alive() and isinstance(raised[0], FileNotFoundError)  # its results had nowhere to go
    assert not (tmp_path / "work").exists()
    assert session.stop(0.01) is True
    evaluations = dict(session.grounder.unet_evaluations)
    answer = session.answer(str(image), "Phrases", "cardiomegaly")
    assert answer.error and answer.message == "the server is stopping: the query was not run"
    assert session.grounder.unet_evaluations == evaluations  # nothing ran


def test_repeated_sigterm_still_deletes_the_whole_folder(server):
    """Stops the module's server, so it runs last: ``timeout`` and a process manager may both signal it, and the
    deletion of the folder (uploads, results) must not stop half-way."""
    assert server.process.poll() is None
    sent = time.monotonic()
    for _ in range(3):
        with contextlib.suppress(ProcessLookupError):
            server.process.send_signal(signal.SIGTERM)
        time.sleep(0.3)
    code = server.process.wait(timeout=STOP_WAIT_S + 60)
    assert time.monotonic() - sent < STOP_WAIT_S + 30
    log = server.log.read_text()
    # 0: stopped; 130: interrupted while stopping; -15: a signal came during the interpreter's own exit
    assert code in (0, 130, -signal.SIGTERM) and "terminate called" not in log, log[-2000:]
    assert not server.workdir.exists()
    assert not list((server.root / "tmp").glob("medground-serve-*"))
    assert not server.lookups.exists(), f"the server looked up host names: {server.lookups.read_text().split()}"


# --- helpers ----------------------------------------------------------------------------------------------------------
def _start(root: Path, flags: list[str] | None = None) -> Server:
    for name in ("tmp", "cwd", "outside", "hooks"):
        (root / name).mkdir(exist_ok=True)
    (root / "outside" / "secret.txt").write_text(SECRET)
    (root / "outside" / "secret.png").write_bytes(_png(generate_phantom(7).image))
    (root / "cwd" / "secret.txt").write_text(SECRET)
    (root / "hooks" / "sitecustomize.py").write_text(RECORD_LOOKUPS)
    port = _free_port()
    log, lookups = root / "serve.log", root / "lookups.txt"
    env = {**os.environ, "TMPDIR": str(root / "tmp"), "OMP_NUM_THREADS": str(torch.get_num_threads()),
           "PYTHONPATH": os.pathsep.join(filter(None, [str(root / "hooks"), os.environ.get("PYTHONPATH")])),
           "MEDGROUND_TEST_LOOKUPS": str(lookups)}
    with log.open("w") as sink:
        command = [sys.executable, "-m", "medground.cli", "serve", "--port", str(port), *(flags or [])]
        process = subprocess.Popen(command, stdout=sink, stderr=subprocess.STDOUT, env=env, cwd=root / "cwd")
    deadline = time.monotonic() + START_TIMEOUT_S
    while not re.search(r"in (\S+) \(deleted when the server stops\)", log.read_text()):
        if process.poll() is not None or time.monotonic() > deadline:
            process.kill()
            pytest.fail(f"medground serve did not start:\n{log.read_text()}")
        time.sleep(0.5)
    workdir = Path(re.search(r"in (\S+) \(deleted when the server stops\)", log.read_text()).group(1))
    assert workdir.parent == root / "tmp" and workdir.is_dir()
    running = Server(process, port, root, workdir, log, lookups)
    assert _get(running, "/")[0] == 200
    return running


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _png(pixels: np.ndarray) -> bytes:
    from io import BytesIO

    buffer = BytesIO()
    Image.fromarray((pixels * 255).round().astype(np.uint8)).save(buffer, format="PNG")
    return buffer.getvalue()


def _request(server: Server, method: str, path: str, body: bytes | None = None,
             headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, bytes]:
    status, _, data = _exchange(server, method, path, body, headers, timeout)
    return status, data


def _exchange(server: Server, method: str, path: str, body: bytes | None = None,
              headers: dict[str, str] | None = None, timeout: float = 60) -> tuple[int, dict[str, str], bytes]:
    """One request, the path sent exactly as given (no normalisation of ``..`` or of percent-escapes)."""
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=timeout)
    try:
        connection.request(method, path, body=body, headers=headers or {})
        response = connection.getresponse()
        return response.status, {k.lower(): v for k, v in response.getheaders()}, response.read()
    finally:
        connection.close()


def _get(server: Server, path: str) -> tuple[int, dict[str, str], bytes]:
    return _exchange(server, "GET", path.replace(" ", "%20"))


def _upload(server: Server, name: bytes, data: bytes) -> tuple[int, bytes]:
    return _upload_many(server, [(name, data)])


def _upload_many(server: Server, files: list[tuple[bytes, bytes]]) -> tuple[int, bytes]:
    """POST /gradio_api/upload as the page does, the file names written into the form as given (any bytes)."""
    boundary = uuid.uuid4().hex.encode()
    body = b"".join(b"--" + boundary + b'\r\nContent-Disposition: form-data; name="files"; filename="' + name
                    + b'"\r\nContent-Type: image/png\r\n\r\n' + data + b"\r\n" for name, data in files)
    body += b"--" + boundary + b"--\r\n"
    return _request(server, "POST", "/gradio_api/upload", body,
                    {"Content-Type": f"multipart/form-data; boundary={boundary.decode()}"})


def _file(path: str) -> dict[str, Any]:
    return {"path": path, "meta": {"_type": "gradio.FileData"}}


def _join(server: Server, event: str, data: list[Any], visitor: str) -> Iterator[dict]:
    """Queue ``event`` as the page's client does (``visitor`` is its session) and stream the queue's messages."""
    fn_index, trigger = FN[event]
    body = json.dumps({"data": data, "event_data": None, "fn_index": fn_index, "trigger_id": trigger,
                       "session_hash": visitor}).encode()
    status, reply = _request(server, "POST", "/gradio_api/queue/join", body, {"Content-Type": "application/json"})
    assert status == 200, reply
    connection = http.client.HTTPConnection("127.0.0.1", server.port, timeout=QUERY_TIMEOUT_S)
    try:
        connection.request("GET", f"/gradio_api/queue/data?session_hash={visitor}")
        response = connection.getresponse()
        for line in response:
            if line.startswith(b"data:"):
                message = json.loads(line[5:])
                yield message
                if message["msg"] in ("process_completed", "close_stream"):
                    return
    finally:
        connection.close()


def _event(server: Server, event: str, data: list[Any], visitor: str | None = None,
           allow_error: bool = False) -> dict:
    """The outcome of ``event``: ``{"data": outputs}``, or ``{"error": True}`` when it failed."""
    for message in _join(server, event, data, visitor or uuid.uuid4().hex):
        if message["msg"] == "process_completed":
            if not message.get("success"):
                assert allow_error, f"{event} failed: {message}"
                return {"error": True}
            return {"data": message["output"]["data"]}
    pytest.fail(f"{event}: the queue closed without an answer")


def _tree(folder: Path, skip: Path | None = None) -> set[str]:
    """Every path under ``folder`` (but under ``skip``) and, for files, their size; compared as ``after - before``
    (what appeared), since the server deletes stale files meanwhile."""
    found = set()
    for path in folder.rglob("*"):
        if skip is not None and path.is_relative_to(skip):
            continue
        with contextlib.suppress(FileNotFoundError):
            found.add(f"{path} {path.lstat().st_size if path.is_file() and path.name != 'serve.log' else ''}")
    return found


def _strays(server: Server) -> list[Path]:
    return [path for path in server.workdir.iterdir() if path.is_file() and not path.is_symlink()]


def _until(condition: Any, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            pytest.fail(f"timed out waiting for {what}")
        time.sleep(0.2)
