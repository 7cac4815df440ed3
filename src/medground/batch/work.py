"""Grounding one work unit: its images decoded and mapped to the model's input (``prepare_unit``, run ahead on
loader workers), then one ``Grounder.ground_many`` call for all their phrases, then one output row per query.

A unit's result depends only on the unit: the Grounder keeps no trajectory cache here, so the same unit gives the
same rows on any worker, after any resume, under either engine. An image that cannot be read, or a phrase the text
encoder refuses, becomes an error row (the run goes on); anything else stops the run.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass, replace
from typing import Any

import numpy as np

from medground.batch.manifest import ImageQueries, Query, Unit
from medground.errors import ConfigError, ImageError, PhraseError
from medground.geometry import PreparedImage, prepare_image
from medground.results import GroundingResult


@dataclass(frozen=True)
class PreparedUnit:
    """A unit with each image read and resized (or the reason it could not be)."""

    unit: Unit
    images: tuple[PreparedImage | None, ...]
    errors: tuple[str | None, ...]

    def pin_memory(self) -> PreparedUnit:
        """Page-locked inputs for a faster, asynchronous copy to the GPU (called by the DataLoader)."""
        return replace(self, images=tuple(None if p is None else p.pin_memory() for p in self.images))


def prepare_unit(unit: Unit, image_size: int) -> PreparedUnit:
    """The CPU part of a unit: its images read and resized to ``image_size``; an unreadable image becomes an error
    for its rows instead of stopping the run."""
    images: list[PreparedImage | None] = []
    errors: list[str | None] = []
    for image in unit.images:
        try:
            images.append(prepare_image(image.path, image_size))
            errors.append(None)
        except ImageError as exc:
            images.append(None)
            errors.append(str(exc))
    return PreparedUnit(unit, tuple(images), tuple(errors))


@dataclass(frozen=True)
class BatchJob:
    """What a worker needs to build its grounder: picklable, so each Ray actor builds its own from it."""

    model: str
    device: str
    precision: str
    text_encoder: str | None
    batch_size: int | None
    """Images per inversion batch; None: from free GPU memory (``engine.batching``), the Grounder's default on CPU."""
    compile: bool
    map_side: int
    map_dtype: str
    image_size: int = 0
    """The model's input side (known once the model is loaded: ``run_batch`` fills it in)."""
    config: dict[str, Any] | None = None
    """The grounding config resolved against the model (``run_batch`` fills it in from the preset and overrides it
    is given): every worker runs exactly this."""

    def build(self) -> UnitGrounder:
        """A worker's unit function (``cluster.Recipe``): a UnitGrounder on the model loaded here."""
        from medground.loading import load_model

        return UnitGrounder(self, load_model(self.model, device=self.device, text_encoder=self.text_encoder))

    def prepare(self, unit: Unit) -> PreparedUnit:
        """The CPU part of ``unit`` (``prepare_unit``), run as a Ray task ahead of the GPU actors."""
        return prepare_unit(unit, self.image_size)


class UnitGrounder:
    """Grounds prepared (or raw) units into output rows with one model, loaded once."""

    def __init__(self, job: BatchJob, model: Any) -> None:
        from medground.config import GroundingConfig
        from medground.engine.batching import auto_batch_size
        from medground.grounder import Grounder

        if job.config is None:
            raise ConfigError("the batch job has no resolved config (run_batch resolves it)")
        if model.image_size != job.image_size:
            raise ConfigError(f"model {model.name!r} takes {model.image_size} px, the job was planned for "
                              f"{job.image_size} px")
        config = GroundingConfig.from_dict(job.config, "the batch job's config")
        batch_size = job.batch_size or auto_batch_size(model, config.unconditional_prompt)
        grounder = Grounder(model, config, precision=job.precision, cache_size=0, compile=job.compile,
                            batch_size=batch_size)
        self.job = job
        self.grounder = grounder

    def __call__(self, unit: Unit | PreparedUnit) -> list[dict[str, Any]]:
        prepared = unit if isinstance(unit, PreparedUnit) else prepare_unit(unit, self.job.image_size)
        rows: dict[tuple[int, int], dict[str, Any]] = {}
        items, asked = [], []
        for image, pixels, error in zip(prepared.unit.images, prepared.images, prepared.errors):
            if pixels is None:
                rows.update({(q.row, q.phrase_index): self._error_row(prepared.unit, q, error, None)
                             for q in image.queries})
                continue
            phrases = self._phrases(prepared.unit, image, pixels, rows)
            if phrases:
                items.append((pixels, phrases))
                asked.append(image)
        reduce = functools.partial(compact_result, side=self.job.map_side, dtype=self.job.map_dtype)
        results = self.grounder.ground_many(items, reduce) if items else []
        for image, image_results in zip(asked, results):
            by_phrase = {result.phrase: result for result in image_results}
            for query in image.queries:
                if (query.row, query.phrase_index) not in rows:
                    rows[query.row, query.phrase_index] = self._row(prepared.unit, query, by_phrase[query.phrase])
        return [rows[q.row, q.phrase_index] for image in prepared.unit.images for q in image.queries]

    def _phrases(self, unit: Unit, image: ImageQueries, pixels: PreparedImage,
                 rows: dict[tuple[int, int], dict[str, Any]]) -> list[str]:
        """The image's distinct phrases the text encoder takes; the others become error rows."""
        from medground.text import phrase_tokens

        usable = []
        for phrase in dict.fromkeys(q.phrase for q in image.queries):
            try:
                phrase_tokens(self.grounder.model.tokenizer, phrase)
                usable.append(phrase)
            except PhraseError as exc:
                rows.update({(q.row, q.phrase_index): self._error_row(unit, q, str(exc), pixels)
                             for q in image.queries if q.phrase == phrase})
        return usable

    @staticmethod
    def _row(unit: Unit, query: Query, result: CompactResult) -> dict[str, Any]:
        return {**_identity(unit, query), **result.fields, "error": None}

    @staticmethod
    def _error_row(unit: Unit, query: Query, error: str | None, pixels: PreparedImage | None) -> dict[str, Any]:
        geometry = pixels.geometry if pixels is not None else None
        return {**_identity(unit, query), "width": geometry.width if geometry else None,
                "height": geometry.height if geometry else None, "boxes": None, "mask_area": None, "flat": None,
                "map": None, "inversion_s": None, "conditional_s": None, "postprocess_s": None, "error": error}


@dataclass(frozen=True)
class CompactResult:
    """What an output row keeps of a GroundingResult; the full-size heatmap and mask are dropped as soon as it is
    made (``Grounder.ground_many``'s ``reduce``), so a unit holds one full-size map at a time."""

    phrase: str
    fields: dict[str, Any]


def compact_result(result: GroundingResult, side: int, dtype: str) -> CompactResult:
    timings = result.timings
    return CompactResult(result.phrase, {
        "width": result.heatmap.shape[1], "height": result.heatmap.shape[0],
        "boxes": [box.to_dict() for box in result.boxes], "mask_area": int(result.mask.sum()), "flat": result.flat,
        "map": compact_map(result.model_heatmap, side, dtype), "inversion_s": timings["inversion"],
        "conditional_s": timings["conditional"], "postprocess_s": timings["postprocess"]})


def _identity(unit: Unit, query: Query) -> dict[str, Any]:
    return {"unit": unit.index, "row": query.row, "phrase_index": query.phrase_index, "id": query.id,
            "image": query.image, "phrase": query.phrase}


def compact_map(model_map: np.ndarray, side: int, dtype: str) -> np.ndarray:
    """The (S, S) map block-averaged to (side, side), flattened row-major, as ``dtype``.

    Args:
        model_map: the (S, S) final map in the model's square.
        side: the stored side; it must divide S.
        dtype: ``float16`` or ``float32``.

    Raises:
        ConfigError: ``side`` does not divide S.
    """
    size = model_map.shape[0]
    if size % side:
        raise ConfigError(f"map side {side} does not divide the model's {size}-pixel input")
    factor = size // side
    blocks = model_map.astype(np.float32).reshape(side, factor, side, factor).mean(axis=(1, 3))
    return blocks.astype(dtype).ravel()


def map_side_for(image_size: int, requested: int) -> int:
    """``requested`` (at most the model's input side), checked to divide the input side."""
    side = min(requested, image_size)
    if image_size % side:
        divisors = [d for d in range(1, image_size + 1) if image_size % d == 0 and d <= requested]
        raise ConfigError(f"--map-side {requested} does not divide the model's {image_size}-pixel input; "
                          f"try {divisors[-1]}")
    return side
