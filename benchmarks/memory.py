"""Memory of ``medground batch`` and of the web app (``medground serve``), before and after the fix of issue 19.

    git worktree add /tmp/medground-before 58d51cd                 # the "before" source tree (once)
    python benchmarks/memory.py --before /tmp/medground-before --json        # "after": this checkout's src
    python benchmarks/memory.py --before /tmp/medground-before --skip-batch --sessions 10 --app-phrases 10 \
        [--server-env MALLOC_MMAP_THRESHOLD_=131072]               # the app at its 10-phrase limit
    git worktree remove --force /tmp/medground-before              # afterwards

Results and what they say: docs/memory.md.

Both versions run from the same virtualenv (this interpreter), each in child processes with ``PYTHONPATH`` = its
``src``, through ``medground.cli.main`` (the entry point of both), on the same generated image: phantom 0 upscaled
to ``--side`` (1536) pixels and saved as PNG.

- batch: a manifest with that one image and ``--phrases`` (10 and 100) phantom-vocabulary phrases in one row,
  ``medground batch --model toy --preset fast``; the peak resident set of the ``medground`` process comes from
  ``wait4`` (``ru_maxrss`` of that child and of any child it waited for, the largest single process). The "before"
  code held a whole work unit's full-size results (heatmap, mask, ... per phrase) until the unit was written; the
  fix reduces each result to its output row as it is made (``Grounder.ground_many(items, reduce)``).
- app: ``medground serve --model toy --preset fast`` on a free port; ``--sessions`` (4) visitors, each a new
  ``gradio_client.Client`` (a new Gradio session), upload the image (``/show_upload``, what the page calls on
  upload) and ground two phrases (``/ground``), as a browser does; the server's resident set (VmRSS of it and its
  descendants, from /proc) is read before the first visitor and after each one. Growth per session = (RSS after
  the last - RSS after the first) / (sessions - 1): the first visitor also pays one-off costs (first inversion,
  lazy imports, allocator warm-up). The "before" app kept each answer (full-size image and maps) in the visitor's
  ``gr.State`` and never freed it; the fix keeps a display-size drawing there.

Printed: per version the numbers, then after / before ratios of the same run. Not a test; run it alone (the
"before" batch with 100 phrases peaks above 2 GB).
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import re
import shutil
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
BEFORE_COMMIT = "58d51cd"
MB = 1 << 20
CLI = "import sys; from medground.cli import main; sys.exit(main(sys.argv[1:]))"
LAYERS = ["heatmap", "mask", "boxes"]


def phantom_phrases(n: int) -> list[str]:
    """``n`` distinct phrases in the phantoms' vocabulary (``phantom_vocabulary``), kinds interleaved."""
    kinds = ["pleural effusion", "cardiomegaly", "nodule", "pneumothorax", "opacity", "apical pneumothorax",
             "lateral pneumothorax"]
    zones = [f"{where} zone opacity" for where in ("upper", "mid", "lower")]
    phrases = [f"{size} {side} {kind}".split() for size in ("", "small", "large", "mild", "moderate")
               for side in ("", "left", "right") for kind in kinds + zones]
    phrases = list(dict.fromkeys(" ".join(p) for p in phrases))
    if n > len(phrases):
        raise SystemExit(f"at most {len(phrases)} distinct phantom phrases; asked for {n}")
    return phrases[:n]


def make_image(path: Path, side: int) -> Path:
    """Phantom 0 upscaled to ``side`` x ``side`` pixels, 8-bit grey PNG."""
    import numpy as np
    from PIL import Image

    from medground.datasets.phantoms import generate_phantom

    pixels = np.round(generate_phantom(0).image * 255).astype(np.uint8)
    Image.fromarray(pixels).resize((side, side), Image.Resampling.BICUBIC).save(path)
    return path


def child_env(src: Path) -> dict[str, str]:
    return {**os.environ, "PYTHONPATH": str(src.resolve()), "TRANSFORMERS_VERBOSITY": "error", "HF_HUB_OFFLINE": "1",
            "TQDM_DISABLE": "1", "GRADIO_ANALYTICS_ENABLED": "False", "PYTHONUNBUFFERED": "1"}


def run_batch(src: Path, manifest: Path, out: Path, preset: str) -> dict[str, float]:
    """``medground batch`` on ``manifest`` in a child process: its peak resident set (``wait4``) and wall time."""
    shutil.rmtree(out, ignore_errors=True)
    command = [sys.executable, "-c", CLI, "batch", str(manifest), "--out", str(out), "--model", "toy",
               "--preset", preset]
    start = time.perf_counter()
    child = subprocess.Popen(command, env=child_env(src), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    output = child.stdout.read() if child.stdout else ""
    _, status, usage = os.wait4(child.pid, 0)
    wall = time.perf_counter() - start
    code = os.waitstatus_to_exitcode(status)
    if code:
        raise SystemExit(f"medground batch with {src} failed ({code}):\n{output[-3000:]}")
    rows = re.search(r"(\d+) rows in", output)
    return {"peak_mb": round(usage.ru_maxrss * 1024 / MB, 1), "wall_s": round(wall, 1),
            "rows": int(rows.group(1)) if rows else None}


def tree_rss_kb(pid: int) -> tuple[int, int]:
    """(VmRSS of ``pid`` and all its descendants, VmHWM of ``pid``) in kB, from /proc."""
    total = hwm = 0
    pending = [pid]
    while pending:
        current = pending.pop()
        try:
            status = Path(f"/proc/{current}/status").read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
        total += int(fields.get("VmRSS", "0 kB").split()[0])
        if current == pid:
            hwm = int(fields.get("VmHWM", "0 kB").split()[0])
        for task in Path(f"/proc/{current}/task").glob("*"):
            with contextlib.suppress(OSError):
                pending.extend(int(c) for c in (task / "children").read_text().split())
    return total, hwm


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def run_app(src: Path, image: Path, preset: str, sessions: int, phrases: list[str], timeout: float,
            server_env: dict[str, str]) -> dict:
    """The server of ``src``, ``sessions`` visitors one after another, its resident set after each."""
    from gradio_client import Client, handle_file

    port = free_port()
    command = [sys.executable, "-c", CLI, "serve", "--model", "toy", "--preset", preset, "--port", str(port)]
    env = {**child_env(src), **server_env}
    server = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                              text=True, start_new_session=True)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(server.stdout or []), daemon=True)
    reader.start()
    try:
        start = time.perf_counter()
        while not any("serving" in line for line in lines):
            if server.poll() is not None or time.perf_counter() - start > timeout:
                raise SystemExit(f"medground serve with {src} did not start:\n{''.join(lines)[-3000:]}")
            time.sleep(0.2)
        url = f"http://127.0.0.1:{port}/"
        time.sleep(1.0)
        startup_s = round(time.perf_counter() - start, 1)
        rss = [tree_rss_kb(server.pid)[0] / 1024]
        endpoints = None
        times = []
        for visitor in range(sessions):
            client = Client(url, verbose=False, download_files=False, analytics_enabled=False)
            if endpoints is None:
                api = client.view_api(print_info=False, return_format="dict")
                endpoints = sorted(api.get("named_endpoints", {}))
                missing = {"/show_upload", "/ground"} - set(endpoints)
                if missing:
                    raise SystemExit(f"the app of {src} has no endpoint {sorted(missing)} (it has {endpoints})")
            began = time.perf_counter()
            client.predict(handle_file(str(image)), LAYERS, api_name="/show_upload")
            status = client.predict(handle_file(str(image)), "Phrases", "\n".join(phrases), LAYERS,
                                    api_name="/ground")[0]
            times.append(round(time.perf_counter() - began, 1))
            if "error" in status:
                raise SystemExit(f"the app of {src} answered with an error: {status}")
            client.close()
            time.sleep(1.0)
            rss.append(tree_rss_kb(server.pid)[0] / 1024)
            print(f"  session {visitor + 1}: server RSS {rss[-1]:.0f} MB ({times[-1]} s)", flush=True)
        peak = tree_rss_kb(server.pid)[1] / 1024
    finally:
        server.terminate()
        try:
            server.wait(timeout=30)
        except subprocess.TimeoutExpired:
            server.kill()
            server.wait()
    growth = (rss[-1] - rss[1]) / (sessions - 1) if sessions > 1 else float("nan")
    return {"startup_s": startup_s, "endpoints": endpoints, "rss_mb": [round(v, 1) for v in rss],
            "session_s": times, "first_session_mb": round(rss[1] - rss[0], 1),
            "growth_per_session_mb": round(growth, 1), "peak_mb": round(peak, 1)}


def ratio(after: float, before: float) -> float | None:
    return round(after / before, 3) if before else None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--before", type=Path, required=True,
                        help=f"source tree of the 'before' code: git worktree add /tmp/medground-before "
                             f"{BEFORE_COMMIT}")
    parser.add_argument("--after", type=Path, default=ROOT, help="source tree of the 'after' code (this checkout)")
    parser.add_argument("--workdir", type=Path, default=None, help="scratch folder (default: a temporary one)")
    parser.add_argument("--side", type=int, default=1536, help="image side in pixels (default 1536)")
    parser.add_argument("--phrases", type=int, nargs="+", default=[10, 100], help="phrases per batch run")
    parser.add_argument("--sessions", type=int, default=4, help="app visitors, one after another (default 4)")
    parser.add_argument("--app-phrases", type=int, default=2,
                        help="phrases per app query (default 2; the current app takes at most 10)")
    parser.add_argument("--server-env", action="append", default=[], metavar="KEY=VALUE",
                        help="an environment variable of both servers (repeatable), e.g. "
                             "MALLOC_MMAP_THRESHOLD_=131072: glibc then returns every large array's memory when it "
                             "is freed, so the RSS shows what is held rather than what the heap kept")
    parser.add_argument("--preset", default="fast", help="grounding preset of both commands (default fast)")
    parser.add_argument("--skip-batch", action="store_true", help="measure only the app")
    parser.add_argument("--skip-app", action="store_true", help="measure only batch")
    parser.add_argument("--server-timeout", type=float, default=300, help="seconds for a server to start")
    parser.add_argument("--json", action="store_true", help="also print the results as one JSON line")
    args = parser.parse_args()
    if not (args.before / "src" / "medground" / "cli.py").is_file() and \
            not (args.before / "src" / "medground" / "cli" / "__init__.py").is_file():
        raise SystemExit(f"--before {args.before} has no src/medground; create it with:\n"
                         f"  git worktree add /tmp/medground-before {BEFORE_COMMIT}")
    server_env = dict(v.split("=", 1) for v in args.server_env)
    versions = {"before": args.before / "src", "after": args.after / "src"}
    workdir = Path(tempfile.mkdtemp(prefix="medground-memory-")) if args.workdir is None else args.workdir
    workdir.mkdir(parents=True, exist_ok=True)
    results: dict = {"side": args.side, "preset": args.preset, "sessions": args.sessions,
                     "app_phrases": args.app_phrases, "server_env": server_env, "batch": {}, "app": {}}
    try:
        image = make_image(workdir / "phantom.png", args.side)
        print(f"image {image} ({args.side}x{args.side})", flush=True)
        if not args.skip_batch:
            for n in args.phrases:
                manifest = workdir / f"manifest-{n}.jsonl"
                manifest.write_text(json.dumps({"id": "p0", "image": image.name, "phrases": phantom_phrases(n)})
                                    + "\n")
                row = {}
                for label, src in versions.items():
                    row[label] = run_batch(src, manifest, workdir / f"out-{label}-{n}", args.preset)
                    print(f"batch, {n} phrases, {label}: peak {row[label]['peak_mb']:.0f} MB, "
                          f"{row[label]['wall_s']} s", flush=True)
                row["ratio_peak"] = ratio(row["after"]["peak_mb"], row["before"]["peak_mb"])
                print(f"batch, {n} phrases: peak after / before = {row['ratio_peak']}", flush=True)
                results["batch"][str(n)] = row
        if not args.skip_app:
            for label, src in versions.items():
                print(f"app, {label}:", flush=True)
                measured = run_app(src, image, args.preset, args.sessions, phantom_phrases(args.app_phrases),
                                   args.server_timeout, server_env)
                results["app"][label] = measured
                print(f"app, {label}: RSS {measured['rss_mb'][0]:.0f} MB idle -> "
                      + " -> ".join(f"{v:.0f}" for v in measured["rss_mb"][1:])
                      + f" MB after each of {args.sessions} sessions; growth per session after the first "
                      f"{measured['growth_per_session_mb']:.1f} MB", flush=True)
            before, after = results["app"]["before"], results["app"]["after"]
            results["app"]["ratio_growth_per_session"] = ratio(after["growth_per_session_mb"],
                                                               before["growth_per_session_mb"])
            results["app"]["ratio_final_rss"] = ratio(after["rss_mb"][-1], before["rss_mb"][-1])
            print(f"app: growth per session after / before = {results['app']['ratio_growth_per_session']}, "
                  f"RSS after the last session after / before = {results['app']['ratio_final_rss']}", flush=True)
        if args.json:
            print(json.dumps(results))
    finally:
        if args.workdir is None:
            shutil.rmtree(workdir, ignore_errors=True)


if __name__ == "__main__":
    main()
