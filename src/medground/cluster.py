"""Where numbered work units run: in this process, or on a Ray cluster (``--engine ray``, extra ``medground[ray]``).

An executor takes ``(index, unit)`` pairs and yields ``Done(index, result, worker)`` in index order; the caller writes
the results, so a command writes the same rows whichever engine computed them, and keeps its own resume guarantee.

On Ray the units become a Ray Data dataset (one block per unit), mapped with ``map_batches`` by a fixed pool of
actors, each of which builds the recipe once (so the model is loaded once per worker): one actor per GPU with
``num_gpus=1``, or CPU actors of ``threads`` CPUs each. Recipes that can prepare a unit apart from grounding it
(decoding images) get a stage of CPU tasks before the GPU actors, so GPUs never wait on decoding. The results
stream back to this process in unit order. Ray restarts a killed actor and retries its unit; a unit that still
arrives twice is dropped by the writer (``BatchWriter.add``, ``evaluate``), so nothing is lost or written twice.
"""

from __future__ import annotations

import os
import pickle
import socket
import subprocess
import sys
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from typing import Any, Protocol

from medground.errors import ConfigError, MedgroundError
from medground.extras import extra_missing

ENGINES = ("local", "ray")
MAX_BLOCKS = 10_000
CONNECT_SECONDS = 20
"""How long connecting to an existing cluster may take before the address is reported as unusable."""


@dataclass(frozen=True)
class Done:
    """A finished unit: its index in the plan, its result, and the worker that computed it."""

    index: int
    result: Any
    worker: str
    """host:pid of the process that computed it."""


class Recipe(Protocol):
    """Picklable instructions a worker builds its unit function from (loading the model once).

    ``build()`` returns the function that computes one unit; on GPU actors, a recipe's ``prepare(unit)`` (the CPU
    part: decoding images), if it has one, runs ahead as Ray CPU tasks.
    """

    def build(self) -> Callable[[Any], Any]: ...


Executor = Callable[[Iterable[tuple[int, Any]]], Iterator[Done]]


@dataclass(frozen=True)
class ClusterOptions:
    """Where and how wide a run goes on Ray (``--engine ray``)."""

    address: str | None = None
    """An existing cluster (``auto``, ``ray://host:10001``, ``host:6379``); None starts a local one for the run."""
    workers: int | None = None
    """Actors; default: every GPU of the cluster (``--device cuda``) or its CPUs // ``threads``."""
    device: str = "cpu"
    threads: int = 1
    """CPUs (and torch threads) per CPU actor."""


def cluster_options(engine: str, address: str | None, workers: int | None, device: str,
                    threads: int) -> ClusterOptions | None:
    """None for the ``local`` engine (which takes no cluster flags), else where and how wide to run on Ray.

    Args:
        engine: ``local`` or ``ray``.
        address: an existing Ray cluster; None starts a local one for the run.
        workers: actors; None: from the cluster's GPUs or CPUs.
        device: the model's device; ``cuda...`` runs one actor per GPU.
        threads: CPUs (and torch threads) per CPU actor.

    Raises:
        ConfigError: an unknown engine, or ``address`` or ``workers`` with the local engine.
    """
    if engine not in ENGINES:
        raise ConfigError(f"engine must be one of {list(ENGINES)}, got {engine!r}")
    if engine == "local":
        if address or workers:
            raise ConfigError("--address and --workers need --engine ray")
        return None
    _import_ray()
    if address is not None:
        check_address(address)  # before any model is loaded
    return ClusterOptions(address=address, workers=workers, device=device, threads=threads)


def worker_name() -> str:
    """``host:pid`` of this process, recorded with each result so a run says where its units were computed."""
    return f"{socket.gethostname()}:{os.getpid()}"


def local_executor(work: Callable[[Any], Any]) -> Executor:
    """Units run one after another in this process."""

    def run(items: Iterable[tuple[int, Any]]) -> Iterator[Done]:
        name = worker_name()
        for index, unit in items:
            yield Done(index, work(unit), name)

    return run


def ray_executor(recipe: Recipe, options: ClusterOptions) -> Executor:
    """Units run on a Ray cluster (see the module docstring)."""
    return lambda items: _run_on_ray(items, recipe, options)


def _import_ray() -> Any:
    try:
        import ray
        import ray.data  # noqa: F401
    except ImportError:
        raise extra_missing("ray", "--engine ray") from None
    return ray


def check_address(address: str) -> None:
    """Fail within ``CONNECT_SECONDS`` when ``address`` names no reachable Ray cluster (Ray itself retries forever):
    its form is checked, its port probed, then a child process connects once."""
    if address == "auto" or address in _REACHED:
        return  # Ray finds a local cluster or says at once that there is none
    host, _, port = address.removeprefix("ray://").rpartition(":")
    if not host or not port.isdigit() or not 0 < int(port) < 65536 or any(c.isspace() for c in address):
        raise ConfigError(f"--address {address!r} is not a Ray address: use auto, HOST:PORT or ray://HOST:PORT")
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"cannot reach a Ray cluster at {address}: {exc.strerror or exc}") from None
    probe = ("import ray, sys; ray.init(address=sys.argv[1], include_dashboard=False, log_to_driver=False, "
             "logging_level='ERROR'); ray.shutdown()")
    try:
        subprocess.run([sys.executable, "-c", probe, address], capture_output=True, timeout=CONNECT_SECONDS, check=True)
    except subprocess.TimeoutExpired:
        raise ConfigError(f"{address} answers, but no Ray cluster accepted a connection within {CONNECT_SECONDS} s")\
            from None
    except subprocess.CalledProcessError as exc:
        last = (exc.stderr.decode(errors="replace").strip().splitlines() or ["no message"])[-1]
        raise ConfigError(f"cannot connect to the Ray cluster at {address}: {last}") from None
    _REACHED.add(address)


_REACHED: set[str] = set()
"""Addresses this process has connected to once (checked again only in a new process)."""


def _run_on_ray(items: Iterable[tuple[int, Any]], recipe: Recipe, options: ClusterOptions) -> Iterator[Done]:
    ray = _import_ray()
    records = [{"index": index, "payload": pickle.dumps(unit)} for index, unit in items]
    if not records:
        return
    started_here = not ray.is_initialized()
    if started_here:
        if options.address is not None:
            check_address(options.address)
        try:
            ray.init(address=options.address, include_dashboard=False, log_to_driver=False, logging_level="ERROR")
        except (ConnectionError, RuntimeError, ValueError) as exc:
            raise ConfigError(f"cannot start or join a Ray cluster (--address {options.address}): {exc}") from None
    try:
        context = ray.data.DataContext.get_current()
        context.execution_options.preserve_order = True
        context.enable_progress_bars = False
        gpu = options.device.startswith("cuda")
        workers = check_workers(ray.cluster_resources(), gpu, options.threads, options.workers)
        dataset = ray.data.from_items(records, override_num_blocks=min(len(records), MAX_BLOCKS))
        if gpu and hasattr(recipe, "prepare"):
            dataset = dataset.map_batches(_prepare, fn_kwargs={"recipe": recipe}, batch_size=1, num_cpus=1)
        resources = {"num_gpus": 1} if gpu else {"num_cpus": options.threads}
        dataset = dataset.map_batches(_Worker, fn_constructor_args=(recipe, None if gpu else options.threads),
                                      batch_size=1, compute=ray.data.ActorPoolStrategy(size=workers), **resources)
        for row in dataset.iter_rows():
            yield Done(int(row["index"]), pickle.loads(row["payload"]), str(row["worker"]))
    except Exception as exc:
        cause = _medground_cause(exc)
        if cause is not None:
            raise cause from None
        raise
    finally:
        if started_here:
            ray.shutdown()


def check_workers(resources: dict[str, float], gpu: bool, threads: int, workers: int | None) -> int:
    """The actors to start: ``workers`` if the cluster has room for them (each one GPU, or ``threads`` CPUs), else
    as many as it has room for; more than it has would wait forever for resources that never come."""
    if gpu:
        gpus = int(resources.get("GPU", 0))
        if gpus < 1:
            raise ConfigError("--device cuda with --engine ray needs GPUs in the Ray cluster; it has none")
        if workers is not None and workers > gpus:
            raise ConfigError(f"--workers {workers} needs {workers} GPUs; the Ray cluster has {gpus}")
        return workers or gpus
    cpus = int(resources.get("CPU", 0))
    if threads > cpus:
        raise ConfigError(f"--worker-threads {threads} is more than the Ray cluster's {cpus} CPUs")
    if workers is not None and workers * threads > cpus:
        raise ConfigError(f"--workers {workers} x --worker-threads {threads} needs {workers * threads} CPUs; the Ray "
                          f"cluster has {cpus}")
    return workers or max(1, cpus // threads)


def _medground_cause(exc: BaseException) -> MedgroundError | None:
    """The MedgroundError a worker raised, out of Ray's wrappers (so the command reports it as one line)."""
    seen: set[int] = set()
    current: BaseException | None = exc
    while current is not None and id(current) not in seen:
        if isinstance(current, MedgroundError):
            return current
        seen.add(id(current))
        current = getattr(current, "cause", None) or current.__cause__
    return None


def _prepare(batch: dict[str, Any], recipe: Recipe) -> dict[str, Any]:
    """Ray Data stage: the CPU part of a unit (decoding, resizing), as CPU tasks ahead of the GPU actors."""
    import numpy as np

    payloads = [pickle.dumps(recipe.prepare(pickle.loads(p))) for p in batch["payload"]]  # type: ignore[attr-defined]
    return {"index": batch["index"], "payload": np.array(payloads, dtype=object)}


class _Worker:
    """Ray Data stage: an actor that builds the recipe once and then does one unit per call."""

    def __init__(self, recipe: Recipe, threads: int | None) -> None:
        if threads is not None:
            import torch

            torch.set_num_threads(threads)
        self.work = recipe.build()
        self.name = worker_name()

    def __call__(self, batch: dict[str, Any]) -> dict[str, Any]:
        import numpy as np

        payloads = [pickle.dumps(self.work(pickle.loads(p))) for p in batch["payload"]]
        return {"index": batch["index"], "payload": np.array(payloads, dtype=object),
                "worker": np.array([self.name] * len(payloads), dtype=object)}
