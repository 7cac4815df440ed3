"""``--engine ray`` on a local Ray cluster (2 CPUs, the toy model, 20 phantoms): the rows and records of
``--engine local``, and a worker killed mid-run retried without losing or repeating a row.

On the CPU the maps depend at about 1e-4 on torch's thread count (oneDNN splits its reductions by thread), so the
local runs here use the actors' one thread: the same job with the same numerics.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal

import numpy as np
import pytest
import torch
from manifests import FAST_TOY, phantom_rows, read_output, toy_job, write_manifest

from medground.batch.manifest import Manifest
from medground.batch.runner import run_batch
from medground.cli import main
from medground.cluster import ClusterOptions
from medground.datasets import load_dataset
from medground.evaluate.runner import run_evaluation
from medground.evaluate.store import RunWriter
from medground.grounder import resolve_config
from medground.loading import load_model
from medground.methods import MethodOptions, make_method

ray = pytest.importorskip("ray", reason="the Ray tests need the medground[ray] extra (make test installs it)")
TWO_CPU_ACTORS = ClusterOptions(workers=2, threads=1)


@contextlib.contextmanager
def one_thread():
    saved = torch.get_num_threads()
    torch.set_num_threads(TWO_CPU_ACTORS.threads)
    try:
        yield
    finally:
        torch.set_num_threads(saved)


@pytest.fixture(scope="module")
def cluster():
    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
    yield
    ray.shutdown()


@pytest.fixture(scope="module")
def phantoms(tmp_path_factory):
    folder = tmp_path_factory.mktemp("ray-phantoms")
    return write_manifest(folder / "manifest.parquet", phantom_rows(folder, 8_500_000, 20))


@pytest.fixture(scope="module")
def local_rows(phantoms, tmp_path_factory):
    out = tmp_path_factory.mktemp("local") / "out"
    with one_thread():
        run_batch(Manifest.open(phantoms), out, toy_job(), overrides=FAST_TOY, images_per_unit=2, progress=False)
    return read_output(out)


def assert_same_rows(ray_rows: dict, local_rows: dict) -> None:
    assert set(ray_rows) == set(local_rows)
    for key, expected in local_rows.items():
        row = ray_rows[key]
        assert [(b["x"], b["y"], b["w"], b["h"]) for b in row["boxes"]] == \
            [(b["x"], b["y"], b["w"], b["h"]) for b in expected["boxes"]]
        assert np.allclose([b["score"] for b in row["boxes"]], [b["score"] for b in expected["boxes"]], atol=1e-6)
        assert np.abs(np.asarray(row["map"]) - np.asarray(expected["map"])).max() <= 1e-6
        same = ("unit", "id", "image", "phrase", "width", "height", "mask_area", "flat", "error")
        assert {k: row[k] for k in same} == {k: expected[k] for k in same}


def test_ray_batch_gives_the_local_rows(cluster, phantoms, local_rows, tmp_path):
    summary = run_batch(Manifest.open(phantoms), tmp_path / "out", toy_job(), overrides=FAST_TOY, images_per_unit=2,
                        cluster=TWO_CPU_ACTORS, progress=False)
    assert summary.computed == summary.rows == len(local_rows) and summary.errors == 0
    assert_same_rows(read_output(tmp_path / "out"), local_rows)


def test_ray_worker_killed_mid_run_is_retried(cluster, phantoms, local_rows, tmp_path):
    """SIGKILL of the actor that delivered the first unit: Ray restarts it and retries its units; every row arrives,
    once, with the local numbers."""
    killed: list[str] = []
    after: list[str] = []

    def kill_first_worker(done) -> None:
        if killed:
            after.append(done.worker)
            return
        killed.append(done.worker)
        os.kill(int(done.worker.rsplit(":", 1)[1]), signal.SIGKILL)

    run_batch(Manifest.open(phantoms), tmp_path / "out", toy_job(), overrides=FAST_TOY,
              images_per_unit=2, cluster=TWO_CPU_ACTORS,
              progress=False, on_unit=kill_first_worker)
    assert killed and len(after) == 9  # the kill came after the first of ten units
    assert len({*killed, *after}) >= 3  # the restarted actor (a new process) did units too
    assert_same_rows(read_output(tmp_path / "out"), local_rows)


def test_ray_eval_gives_the_local_records(cluster, tmp_path):
    model = load_model("toy")
    options = MethodOptions(model=model, config=resolve_config(model, "paper", FAST_TOY))
    load = load_dataset("phantoms", seed=8_600_000, n=8)
    settings = {"method": "ldm"}
    with one_thread():
        run_evaluation(load, make_method("ldm", options), RunWriter(tmp_path / "local"), settings, progress=False)
    overrides = [arg for key, value in FAST_TOY.items() for arg in ("--set", f"{key}={value}")]
    assert main(["eval", "--dataset", "phantoms", "--seed", "8600000", "--n", "8", "--method", "ldm", "--engine",
                 "ray", "--workers", "2", *overrides, "--out", str(tmp_path / "ray")]) == 0
    local, remote = ([json.loads(line) for line in (tmp_path / run / "samples.jsonl").read_text().splitlines()]
                     for run in ("local", "ray"))
    assert [r["id"] for r in remote] == [r["id"] for r in local] and len(local) == len(load.samples)
    for a, b in zip(local, remote):
        assert a.keys() == b.keys()
        for key in a:
            if isinstance(a[key], float) and key != "seconds":
                assert b[key] == pytest.approx(a[key], abs=1e-6)
            elif key != "seconds":
                assert b[key] == a[key]
    for record in local:
        local_preview, ray_preview = (np.load(tmp_path / run / "previews" / f"{record['id']}.npy")
                                      for run in ("local", "ray"))
        assert np.allclose(local_preview, ray_preview, atol=1e-3, equal_nan=True)
