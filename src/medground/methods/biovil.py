"""BioViL and BioViL-T baselines (docs/method.md section 9) through hi-ml-multimodal (``medground[baselines]``).

The heatmap is hi-ml-multimodal's own ``ImageTextInferenceEngine.get_similarity_map_from_raw_data`` (cosine
similarity of each projected image patch with the projected phrase, Gaussian sigma 1.5 on the patch grid, nearest
upsampling onto the centre crop's footprint, NaN outside it), clamped at 0 as the paper's evaluation did.

hi-ml-multimodal 0.2.2 tokenises with ``tokenizer.batch_encode_plus``, which transformers 5 removed. We *shim* that one
call: the tokenizer instance gets a ``batch_encode_plus`` that forwards to ``__call__`` (same arguments, same output),
so the baselines live in the same environment as the rest of medground instead of pinning transformers < 5.

Weights: ``source`` is a hub id (default: the variant's official repo at its pinned revision, as hi-ml-multimodal
uses) or a local copy of that repo: a folder holding the text model (``config.json``, weights, ``vocab.txt``) and the
image encoder's ``.pt`` file side by side, as the Hugging Face repos lay them out.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from medground.backbones.model_dir import parse_source
from medground.datasets.base import Sample
from medground.errors import ImageError, ModelLoadError, PhraseError, WeightsNotFoundError
from medground.extras import extra_missing
from medground.images import check_image_file

RESIZE = 512
"""Shorter side after resizing, before the centre crop (hi-ml-multimodal's inference transform)."""
JOINT_FEATURE_SIZE = 128
HIML_SUFFIXES = {".jpg": ".jpg", ".jpeg": ".jpeg", ".png": ".png", ".dcm": ".dcm", ".dicom": ".dcm"}
"""hi-ml-multimodal picks its image reader by the (case-sensitive) suffix; other spellings are linked under these."""


@dataclass(frozen=True)
class BiovilVariant:
    """One published model: where its weights live and how its images are cropped."""

    name: str
    hub_id: str
    revision: str
    image_weights: str
    crop_size: int
    multi_image: bool
    """BioViL-T's image encoder is the multi-image (temporal) ResNet-50 + ViT pooler; used here with one image."""


VARIANTS = {
    "biovil": BiovilVariant("biovil", "microsoft/BiomedVLP-CXR-BERT-specialized", "v1.1",
                            "biovil_image_resnet50_proj_size_128.pt", crop_size=480, multi_image=False),
    "biovil-t": BiovilVariant("biovil-t", "microsoft/BiomedVLP-BioViL-T", "v1.0",
                              "biovil_t_image_model_proj_size_128.pt", crop_size=448, multi_image=True),
}


def _require_himl() -> None:
    try:
        import health_multimodal.image  # noqa: F401  (imports torchvision)
    except ImportError as exc:
        raise extra_missing("baselines", "the BioViL baselines", exc) from exc
    except (RuntimeError, OSError) as exc:  # a torchvision built for another torch fails while registering its ops
        import torch

        raise ModelLoadError(
            f"hi-ml-multimodal is installed but torchvision does not import beside torch {torch.__version__}: "
            f"install the torchvision release built for this torch ({exc})"
        ) from exc


def _image_weights_path(variant: BiovilVariant, source: dict[str, str]) -> Path:
    if "path" in source:
        path = Path(source["path"]) / variant.image_weights
        if not path.is_file():
            raise WeightsNotFoundError(f"{variant.name} image weights not found: {path}")
        return path
    from huggingface_hub import hf_hub_download

    try:
        return Path(hf_hub_download(source["hub_id"], variant.image_weights, revision=source["revision"]))
    except Exception as exc:  # the hub client raises several unrelated types for "not available"
        raise WeightsNotFoundError(
            f"{variant.name} image weights {variant.image_weights!r} not available from hub id {source['hub_id']!r} "
            f"revision {source['revision']!r}: {exc}. Pass a local copy of that repository instead (--model DIR)."
        ) from exc


def _load_text(variant: BiovilVariant, source: dict[str, str]) -> tuple[Any, Any]:
    from health_multimodal.text.model import CXRBertModel, CXRBertTokenizer

    where = source.get("path") or source["hub_id"]
    kwargs = {"local_files_only": True} if "path" in source else {"revision": source["revision"]}
    try:
        tokenizer = CXRBertTokenizer.from_pretrained(where, **kwargs)
        model, info = CXRBertModel.from_pretrained(where, output_loading_info=True, **kwargs)
    except (OSError, ValueError) as exc:
        raise WeightsNotFoundError(f"{variant.name} text model not loadable from {where!r} {kwargs}: {exc}") from exc
    unfilled = sorted(info["missing_keys"]) + sorted(str(key) for key in info["mismatched_keys"])
    if unfilled:
        raise ModelLoadError(f"{variant.name} text model from {where!r} leaves {len(unfilled)} parameters "
                             f"unfilled or of the wrong shape (e.g. {unfilled[:3]})")
    if not hasattr(tokenizer, "batch_encode_plus"):  # transformers >= 5; see the module docstring

        def batch_encode_plus(batch_text_or_text_pairs: list[str], **options: Any) -> Any:
            return tokenizer(batch_text_or_text_pairs, **options)

        tokenizer.batch_encode_plus = batch_encode_plus
    return tokenizer, model.eval()


def load_biovil(variant: str = "biovil", source: str | None = None, device: str = "cpu") -> BiovilMethod:
    """A ready baseline; ``source`` = hub-id[@revision] or a local copy of the repo (default: the official one).

    Args:
        variant: ``biovil`` or ``biovil-t``.
        source: as above; None: the variant's official repository at its pinned revision.
        device: where the image and text models run.

    Raises:
        ModelLoadError: an unknown variant, hi-ml-multimodal missing, or weights that do not fit their encoder
            (WeightsNotFoundError: weights that are not available).
    """
    if variant not in VARIANTS:
        raise ModelLoadError(f"unknown BioViL variant {variant!r}; known: {sorted(VARIANTS)}")
    _require_himl()
    from health_multimodal.image import ImageInferenceEngine
    from health_multimodal.image.data.transforms import create_chest_xray_transform_for_inference
    from health_multimodal.image.model.model import ImageModel
    from health_multimodal.image.model.types import ImageEncoderType
    from health_multimodal.text import TextInferenceEngine
    from health_multimodal.vlp import ImageTextInferenceEngine

    spec = VARIANTS[variant]
    parsed = parse_source(source or f"{spec.hub_id}@{spec.revision}")
    weights = _image_weights_path(spec, parsed)
    encoder_type = ImageEncoderType.RESNET50_MULTI_IMAGE if spec.multi_image else ImageEncoderType.RESNET50
    try:
        image_model = ImageModel(img_encoder_type=encoder_type, joint_feature_size=JOINT_FEATURE_SIZE,
                                 pretrained_model_path=weights)
    except (RuntimeError, OSError) as exc:  # load_state_dict is strict: a missing or extra key raises
        raise ModelLoadError(f"{spec.name} image weights {weights} do not fit its image encoder: {exc}") from exc
    tokenizer, text_model = _load_text(spec, parsed)
    engine = ImageTextInferenceEngine(
        ImageInferenceEngine(image_model, create_chest_xray_transform_for_inference(RESIZE, spec.crop_size)),
        TextInferenceEngine(tokenizer, text_model),
    )
    engine.to(device)
    return BiovilMethod(spec.name, engine)


class BiovilMethod:
    """A GroundingMethod: one hi-ml-multimodal similarity map per sample, clamped at 0, NaN outside the crop."""

    def __init__(self, name: str, engine: Any) -> None:
        self.name = name
        self.engine = engine

    @classmethod
    def from_options(cls, name: str, options: Any) -> BiovilMethod:
        """``options.biovil_weights``: hub-id[@revision] or a local copy of the repo (default: the official one)."""
        return load_biovil(name, options.biovil_weights, options.device)

    def heatmaps(self, samples: Sequence[Sample]) -> list[np.ndarray]:
        """One map per sample, each read from its image file (``heatmap``)."""
        return [self.heatmap(sample.image, sample.phrase) for sample in samples]

    def heatmap(self, image_path: str | Path, phrase: str) -> np.ndarray:
        """float32 (H, W) of the original image (hi-ml-multimodal reads files only)."""
        if not isinstance(image_path, (str, Path)):
            raise ImageError(f"the BioViL baselines read image files; got {type(image_path).__name__}")
        self._check_phrase(phrase)
        with _himl_readable(Path(image_path)) as readable:
            similarity = self.engine.get_similarity_map_from_raw_data(readable, phrase)
        return np.maximum(similarity, 0).astype(np.float32)  # NaN stays NaN

    def _check_phrase(self, phrase: str) -> None:
        text = self.engine.text_inference_engine
        if not phrase or not phrase.strip():
            raise PhraseError("empty phrase")
        length = len(text.tokenizer(phrase.rstrip("!?."))["input_ids"])
        if length > text.max_allowed_input_length:
            raise PhraseError(f"phrase is {length} tokens long; {self.name}'s text encoder takes at most "
                              f"{text.max_allowed_input_length}: {phrase[:80]!r}...")
        special = [token for token in text.tokenizer.all_special_tokens
                   if token != text.tokenizer.mask_token and token in phrase]
        if special:
            raise PhraseError(f"phrase contains the text encoder's special tokens {special}: {phrase!r}")


@contextlib.contextmanager
def _himl_readable(path: Path) -> Iterator[Path]:
    """The path itself if hi-ml-multimodal reads it by its suffix, else a temporary link with the suffix it knows."""
    check_image_file(path)  # the LDM path's ImageError for missing or unreadable files, without a second decode
    suffix = HIML_SUFFIXES.get(path.suffix.lower())
    if suffix is None:
        raise ImageError(f"{path}: the BioViL baselines read {sorted(HIML_SUFFIXES)} files only")
    if path.suffix == suffix:
        yield path
        return
    with tempfile.TemporaryDirectory(prefix="medground-biovil-") as folder:
        link = Path(folder) / f"image{suffix}"
        os.symlink(path.resolve(), link)
        yield link
