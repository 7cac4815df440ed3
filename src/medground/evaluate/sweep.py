"""``medground sweep``: evaluate a grid of read-out settings and rank them.

Each combination of the grid is an ordinary run folder under the sweep folder (named by its settings), written by
the same runner and store as ``eval``, so a killed sweep resumes where it stopped and finished combinations are only
read. On phantoms a sweep chooses settings, so it runs on the validation seeds only, never on evaluation seeds.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from medground.datasets.base import DatasetLoad
from medground.engine.cost import WorkEstimate, estimate, seconds_per_evaluation
from medground.errors import ConfigError
from medground.evaluate.runner import run_evaluation
from medground.evaluate.store import RunWriter
from medground.outputs import json_bytes, read_json_settings, write_atomic

RANK_SCORE = "auroc_exact + miou + 0.1 * cnr"
"""The validation score the toy models were chosen by (toy.ship), used to rank a sweep."""


def combinations(grid: dict[str, Sequence[Any]]) -> list[dict[str, Any]]:
    """Every combination of the grid's values, in the order the keys were given."""
    keys = list(grid)
    return [dict(zip(keys, values)) for values in itertools.product(*(grid[k] for k in keys))]


def combination_name(settings: dict[str, Any]) -> str:
    """The run folder of one combination: its settings, readable, plus their hash, so two never share a folder."""
    text = json.dumps(settings, sort_keys=True)
    slug = "_".join(f"{k}-{v}" for k, v in settings.items()).replace("/", "-").replace(" ", "")[:60]
    return f"{slug or 'base'}-{hashlib.sha1(text.encode()).hexdigest()[:8]}"


def score(metrics: dict[str, float]) -> float:
    """``RANK_SCORE`` of a combination's pooled metrics; higher is better."""
    return metrics["auroc_exact"] + metrics["miou"] + 0.1 * metrics["cnr"]


def check_sweep_dataset(load: DatasetLoad) -> None:
    """A sweep chooses settings, so on phantoms it runs on the validation seeds only, never on evaluation seeds."""
    from medground.datasets.phantoms import VALIDATION_SEEDS

    seed, n = load.source.get("seed"), load.source.get("n")
    if seed is not None and (seed not in VALIDATION_SEEDS or seed + n - 1 not in VALIDATION_SEEDS):
        raise ConfigError(f"a sweep chooses settings, so on phantoms it runs on the validation seeds "
                          f"{VALIDATION_SEEDS.start}..{VALIDATION_SEEDS.stop - 1} only (never evaluation seeds); "
                          f"got {seed}..{seed + n - 1}")


def run_sweep(load: DatasetLoad, model: Any, preset: str, base: dict[str, Any], grid: dict[str, Sequence[Any]],
              out: Path, run_record: dict[str, Any], resume: bool = False, progress: bool = True,
              on_estimate: Callable[[WorkEstimate], None] | None = None) -> list[dict]:
    """Evaluate the LDM with ``base`` + each combination of ``grid``; returns rows ranked best first.

    Args:
        load: the dataset (on phantoms, validation seeds only: ``check_sweep_dataset``).
        model: the loaded model every combination runs on.
        preset: the recipe the base and the grid modify.
        base: settings every combination shares (``--set`` / ``--config``).
        grid: each setting and its values; the combinations are their product.
        out: the sweep folder (one run folder per combination).
        run_record: what every combination's ``run.json`` records besides its settings.
        resume: continue an interrupted sweep (finished combinations are only read).
        progress: show progress bars.
        on_estimate: called with the work of the whole grid before any of it runs (the command line prints it and
            refuses a long sweep without ``--yes``).
    """
    from medground.grounder import resolve_config
    from medground.methods import MethodOptions, make_method

    out = Path(out)
    rows, skipped = [], []
    configs = {}
    for settings in combinations(grid):  # every combination is resolved against the model once, before any runs
        try:
            configs[combination_name(settings)] = resolve_config(model, preset, {**base, **settings})
        except ConfigError as exc:
            skipped.append({"settings": settings, "reason": str(exc)})
    if on_estimate is not None and configs:
        images, phrases = len({s.image_key for s in load.samples}), len(load.samples)
        per_evaluation = seconds_per_evaluation(model)
        on_estimate(sum((estimate(model, c, images, phrases, per_evaluation) for c in configs.values()),
                        WorkEstimate(0, 0.0)))
    for settings in combinations(grid):
        config = configs.get(combination_name(settings))
        if config is None:
            continue
        folder = out / combination_name(settings)
        row_file = folder / "sweep_row.json"
        if resume and row_file.is_file():
            rows.append(read_json_settings(row_file, "a sweep row"))
            continue
        method = make_method("ldm", MethodOptions(model=model, config=config))
        record = {**run_record, "method": "ldm", "preset": preset, "overrides": {**base, **settings},
                  "config": config.to_dict()}
        started = time.perf_counter()
        summary = run_evaluation(load, method, RunWriter(folder), record, resume=resume, progress=progress)
        pooled = summary["pooled"]
        metrics = {m: pooled[m]["mean"] for m in ("miou", "auroc", "auroc_exact", "cnr")}
        row = {"settings": settings, "folder": folder.name, **metrics, "discrimination": summary["discrimination"],
               "score": score(metrics), "n_samples": summary["n_samples"],
               "unet_evaluations_per_phrase": sum(method.grounder.unet_evaluations.values()) / len(load.samples),
               "seconds_per_phrase": (time.perf_counter() - started) / len(load.samples)}
        write_atomic(row_file, json_bytes(row))
        rows.append(row)
    if not rows:
        raise ConfigError(f"no combination of the grid fits the model: {skipped[0]['reason'] if skipped else ''}")
    ranked = sorted(rows, key=lambda row: -row["score"])
    write_atomic(out / "sweep.json", json_bytes({"rank_score": RANK_SCORE, "rows": ranked, "skipped": skipped}))
    write_atomic(out / "sweep.md", (sweep_table(ranked, skipped) + "\n").encode())
    return ranked


def sweep_table(rows: Sequence[dict[str, Any]], skipped: Sequence[dict[str, Any]] = ()) -> str:
    """The ranked rows as a Markdown table (``sweep.md``), then each skipped combination and why."""
    lines = [f"Ranked by {RANK_SCORE}.", "",
             "| rank | settings | mIoU | AUROC (binned) | AUROC (exact) | CNR | discrimination | UNet evals / phrase "
             "| seconds / phrase |", "|---|---|---|---|---|---|---|---|---|"]
    for rank, row in enumerate(rows, start=1):
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in row["settings"].items()) or "(base)"
        discrimination = "n/a" if row["discrimination"] is None else f"{row['discrimination']:.2f}"
        lines.append(f"| {rank} | {settings} | {row['miou']:.3f} | {row['auroc']:.3f} | {row['auroc_exact']:.3f} | "
                     f"{row['cnr']:.2f} | {discrimination} | {row['unet_evaluations_per_phrase']:.0f} | "
                     f"{row['seconds_per_phrase']:.2f} |")
    for entry in skipped:
        settings = ", ".join(f"{k}={json.dumps(v)}" for k, v in entry["settings"].items())
        lines.append(f"\nSkipped {settings}: {entry['reason']}")
    return "\n".join(lines)


def parse_grid(items: Sequence[str]) -> dict[str, list[Any]]:
    """``key=v1,v2`` or ``key=[json, list]`` per item -> {key: values}."""
    from medground.config import parse_assignment
    from medground.text_input import MAX_JSON_DEPTH, json_depth

    grid: dict[str, list[Any]] = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key.strip() or not raw:
            raise ConfigError(f"--grid expects key=value1,value2, got {item!r}")
        if json_depth(raw) > MAX_JSON_DEPTH:  # before json.loads, whose recursion the nesting would exhaust
            raise ConfigError(f"--grid {key.strip()}: the values are nested deeper than the limit of {MAX_JSON_DEPTH} "
                              "levels")
        try:
            values = json.loads(raw)
            values = values if isinstance(values, list) and not key.endswith(("layers", "weights")) else None
        except json.JSONDecodeError:
            values = None
        if values is None:
            values = [parse_assignment(f"{key}={part}")[1] for part in _split(raw)]
        if key.strip() in grid:
            raise ConfigError(f"--grid {key.strip()} is given twice; list all its values in one --grid "
                              f"{key.strip()}=V1,V2")
        repeated = [v for i, v in enumerate(values) if v in values[:i]]
        if repeated:
            raise ConfigError(f"--grid {key.strip()} lists {repeated[0]!r} more than once; each value is one "
                              "combination")
        grid[key.strip()] = values
    return grid


def _split(raw: str) -> list[str]:
    """Split on commas outside brackets, so list values (``[1,2]``) stay whole."""
    parts, depth, current = [], 0, ""
    for char in raw:
        depth += char in "[{"
        depth -= char in "]}"
        if char == "," and depth == 0:
            parts.append(current)
            current = ""
        else:
            current += char
    return [*parts, current]
