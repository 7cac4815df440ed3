"""``import-diffusers`` and weight loading under hostile or broken inputs: every case ends in a MedgroundError that
names the file (or in a correct result), the source is never written to, a failed import leaves nothing behind, and
an import holds one component in memory at a time."""

from __future__ import annotations

import json
import os
import shutil
import traceback
import weakref
from pathlib import Path

import pytest
import torch
from builders import random_sd_pipeline
from safetensors.torch import load_file, save_file

import medground.backbones.diffusers_import as importer
from medground import load_model
from medground.backbones.diffusers import load_component
from medground.backbones.diffusers_import import import_diffusers
from medground.backbones.weights import read_torch_state, sha256_of
from medground.cli import main
from medground.errors import MedgroundError, ModelLoadError

UNET_FILE = Path("unet") / "diffusion_pytorch_model.safetensors"
VAE_FILE = Path("vae") / "diffusion_pytorch_model.safetensors"
TEXT_FILE = Path("text_encoder") / "model.safetensors"
MARKER = "pwned-by-pickle"


class Payload:
    """A pickle that would run a command when unpickled without ``weights_only``."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


@pytest.fixture(scope="module")
def pristine(tmp_path_factory) -> Path:
    return random_sd_pipeline(tmp_path_factory.mktemp("pristine") / "sd2", version=2)


@pytest.fixture
def pipeline(pristine, tmp_path) -> Path:
    """A private copy of the SD-2 layout that a test may damage."""
    return Path(shutil.copytree(pristine, tmp_path / "sd2"))


def snapshot(folder: Path) -> dict[str, tuple[int, int, str]]:
    """Every file under ``folder`` with its size, mtime and SHA-256: equal snapshots mean nothing was written."""
    return {str(p.relative_to(folder)): (p.stat().st_size, p.stat().st_mtime_ns, sha256_of(p))
            for p in sorted(folder.rglob("*")) if p.is_file()}


def full_text(exc: BaseException) -> str:
    return "".join(traceback.format_exception(exc))


def assert_clean_refusal(exc: BaseException, *fragments: str) -> None:
    """A medground error naming each fragment, and no trace (message or chained cause) of torch's advice."""
    assert isinstance(exc, MedgroundError)
    for fragment in fragments:
        assert fragment in str(exc), (fragment, str(exc))
    assert "weights_only" not in full_text(exc)


def rewrite(path: Path, change) -> None:
    """Rewrite a safetensors file in place (read into memory first: the library maps the file it reads)."""
    state = {k: v.clone() for k, v in load_file(str(path)).items()}
    save_file(change(state), str(path))


# --- 1. source and destination -----------------------------------------------------------------------------------

def test_source_as_destination_is_refused_before_writing(pipeline):
    before = snapshot(pipeline)
    with pytest.raises(ModelLoadError, match="is the pipeline source folder itself"):
        import_diffusers(str(pipeline), pipeline)
    assert snapshot(pipeline) == before


def test_destination_inside_the_source_is_refused(pipeline):
    before = snapshot(pipeline)
    with pytest.raises(ModelLoadError, match="lies inside the pipeline source folder"):
        import_diffusers(str(pipeline), pipeline / "imported")
    assert snapshot(pipeline) == before and not (pipeline / "imported").exists()
    assert not [p for p in pipeline.iterdir() if p.name.startswith(".")]  # no staging folder either


def test_source_inside_the_destination_is_refused(pipeline):
    with pytest.raises(ModelLoadError, match="lies inside --out"):
        import_diffusers(str(pipeline), pipeline.parent)


def test_a_link_to_the_source_as_destination_is_refused(pipeline, tmp_path):
    link = tmp_path / "link"
    link.symlink_to(pipeline, target_is_directory=True)
    before = snapshot(pipeline)
    with pytest.raises(ModelLoadError, match="is the pipeline source folder itself"):
        import_diffusers(str(pipeline), link)
    assert snapshot(pipeline) == before


def test_the_cli_reports_the_refusal_without_a_traceback(pipeline, capsys):
    code = main(["import-diffusers", str(pipeline), "--out", str(pipeline)])
    err = capsys.readouterr().err
    assert code == 2 and err.startswith("medground: error:") and "Traceback" not in err


# --- 2. no partial folder, and --out must be new -----------------------------------------------------------------

def test_a_failed_import_leaves_nothing_and_a_retry_succeeds(pipeline, tmp_path):
    """The VAE is written last: a NaN there fails the import after everything else was copied."""
    good = {k: v.clone() for k, v in load_file(str(pipeline / VAE_FILE)).items()}
    rewrite(pipeline / VAE_FILE, lambda s: {**s, next(iter(s)): torch.full_like(next(iter(s.values())), torch.nan)})
    parent = tmp_path / "models"
    parent.mkdir()
    with pytest.raises(ModelLoadError) as caught:
        import_diffusers(str(pipeline), parent / "imported")
    assert_clean_refusal(caught.value, str(pipeline / VAE_FILE), "NaN or infinite")
    assert ".partial" not in str(caught.value)  # the error names the source, not the removed staging copy
    assert list(parent.iterdir()) == []
    save_file(good, str(pipeline / VAE_FILE))
    out = import_diffusers(str(pipeline), parent / "imported")
    assert (out / "model.json").is_file() and [p.name for p in parent.iterdir()] == ["imported"]


def test_parent_folders_made_for_a_failed_import_are_removed(pipeline, tmp_path):
    (pipeline / UNET_FILE).write_bytes(b"\x00" * 64)
    with pytest.raises(ModelLoadError, match="not a readable safetensors file"):
        import_diffusers(str(pipeline), tmp_path / "a" / "b" / "imported")
    assert not (tmp_path / "a").exists()


def test_an_interrupted_import_leaves_nothing(pipeline, tmp_path, monkeypatch):
    def interrupt(*_args, **_kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(importer, "_import_tokenizer", interrupt)
    with pytest.raises(KeyboardInterrupt):
        import_diffusers(str(pipeline), tmp_path / "imported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd2"]


def test_a_write_error_is_a_model_load_error_and_leaves_nothing(pipeline, tmp_path, monkeypatch):
    def disk_full(*_args, **_kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(importer.shutil, "copy", disk_full)
    with pytest.raises(ModelLoadError, match="cannot write the model for --out .*No space left"):
        import_diffusers(str(pipeline), tmp_path / "imported")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["sd2"]


def test_an_existing_destination_must_be_new_or_empty(pipeline, tmp_path):
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("keep me")
    with pytest.raises(ModelLoadError, match=f"--out {busy} already exists and is not empty.*'notes.txt'"):
        import_diffusers(str(pipeline), busy)
    assert [p.name for p in busy.iterdir()] == ["notes.txt"]
    afile = tmp_path / "afile"
    afile.write_text("x")
    with pytest.raises(ModelLoadError, match="exists and is not a folder"):
        import_diffusers(str(pipeline), afile)
    empty = tmp_path / "empty"
    empty.mkdir()
    assert (import_diffusers(str(pipeline), empty) / "model.json").is_file()
    with pytest.raises(ModelLoadError, match="already holds a model"):
        import_diffusers(str(pipeline), empty)


# --- 3. pickles, corruption, truncation ----------------------------------------------------------------------------

def pickle_with_code(folder: Path, name: str, source: Path, marker: Path) -> Path:
    state = dict(load_file(str(source)))
    source.unlink()
    state["payload"] = Payload(marker)
    torch.save(state, folder / name)
    return folder / name


def test_a_text_encoder_pickle_with_code_is_refused_in_medgrounds_words(pipeline, tmp_path):
    marker = tmp_path / MARKER
    path = pickle_with_code(pipeline / "text_encoder", "pytorch_model.bin", pipeline / TEXT_FILE, marker)
    for attempt in (lambda: load_model(pipeline), lambda: import_diffusers(str(pipeline), tmp_path / "out")):
        with pytest.raises(ModelLoadError) as caught:
            attempt()
        assert_clean_refusal(caught.value, str(path), "pickled code or objects", "will not unpickle",
                             "system", "safetensors")
    assert not marker.exists() and not (tmp_path / "out").exists()


def test_a_unet_pickle_with_code_is_refused_in_medgrounds_words(pipeline, tmp_path):
    marker = tmp_path / MARKER
    path = pickle_with_code(pipeline / "unet", "diffusion_pytorch_model.bin", pipeline / UNET_FILE, marker)
    with pytest.raises(ModelLoadError) as caught:
        import_diffusers(str(pipeline), tmp_path / "out")
    assert_clean_refusal(caught.value, str(path), "pickled code or objects", "safetensors")
    assert not marker.exists()


def test_the_transformers_loader_itself_refuses_pickles_cleanly(pipeline, tmp_path, monkeypatch):
    """Where transformers unpickles before medground's own reader (here: the pre-read switched off)."""
    import medground.backbones.model_dir as model_dir

    monkeypatch.setattr(model_dir, "text_checkpoint_dtypes", lambda folder: None)
    path = pickle_with_code(pipeline / "text_encoder", "pytorch_model.bin", pipeline / TEXT_FILE, tmp_path / MARKER)
    with pytest.raises(ModelLoadError) as caught:
        load_model(pipeline)
    assert_clean_refusal(caught.value, str(path.parent), "pickled code or objects")
    assert not (tmp_path / MARKER).exists()


@pytest.mark.parametrize("damage", ["truncated", "garbage", "empty"])
@pytest.mark.parametrize("part", [UNET_FILE, VAE_FILE, TEXT_FILE], ids=["unet", "vae", "text"])
def test_damaged_safetensors_are_named(pipeline, tmp_path, part, damage):
    data = (pipeline / part).read_bytes()
    (pipeline / part).write_bytes({"truncated": data[: len(data) // 2], "garbage": b"\xff" * 100,
                                   "empty": b""}[damage])
    for attempt in (lambda: load_model(pipeline), lambda: import_diffusers(str(pipeline), tmp_path / "out")):
        with pytest.raises(ModelLoadError) as caught:
            attempt()
        assert_clean_refusal(caught.value, str(pipeline / part), "not a readable safetensors file")
    assert not (tmp_path / "out").exists()


def test_damaged_and_odd_torch_files_are_named(tmp_path):
    good = {"weight": torch.ones(3)}
    torch.save(good, tmp_path / "good.bin")
    data = (tmp_path / "good.bin").read_bytes()
    (tmp_path / "truncated.bin").write_bytes(data[: len(data) // 2])
    (tmp_path / "text.bin").write_text("not a checkpoint")
    torch.save({"state_dict": good, "epoch": 3}, tmp_path / "training.bin")
    torch.save([torch.ones(1)], tmp_path / "list.bin")
    for name, expected in [("truncated.bin", "truncated, corrupt"), ("text.bin", "truncated, corrupt"),
                           ("training.bin", "save its 'state_dict' entry alone"), ("list.bin", "holds a list")]:
        with pytest.raises(ModelLoadError) as caught:
            read_torch_state(tmp_path / name)
        assert_clean_refusal(caught.value, str(tmp_path / name), expected)
    torch.save(good, tmp_path / "legacy.bin", _use_new_zipfile_serialization=False)  # not mappable: read whole
    assert torch.equal(read_torch_state(tmp_path / "legacy.bin")["weight"], good["weight"])


def test_a_sharded_index_that_is_not_a_map_is_named(pipeline, tmp_path):
    (pipeline / UNET_FILE).unlink()
    index = pipeline / "unet" / "diffusion_pytorch_model.safetensors.index.json"
    index.write_text(json.dumps({"weight_map": ["a.safetensors"]}))
    with pytest.raises(ModelLoadError, match="'weight_map' must map weight names to shard file names"):
        import_diffusers(str(pipeline), tmp_path / "out")
    index.write_text(json.dumps({"weight_map": {"a": "../../escape.safetensors"}}))
    with pytest.raises(ModelLoadError, match="leaves the model directory"):
        import_diffusers(str(pipeline), tmp_path / "out")
    assert not (tmp_path / "out").exists()


# --- 4. non-floating weights ---------------------------------------------------------------------------------------

def to_int8(state: dict[str, torch.Tensor], only: str | None = None) -> dict[str, torch.Tensor]:
    return {k: (v * 100).to(torch.int8) if v.is_floating_point() and (only is None or k == only) else v
            for k, v in state.items()}


@pytest.mark.parametrize("part", [UNET_FILE, VAE_FILE, TEXT_FILE], ids=["unet", "vae", "text"])
def test_int8_weights_are_refused_naming_file_key_and_dtype(pipeline, tmp_path, part):
    key = sorted(load_file(str(pipeline / part)))[-1]
    rewrite(pipeline / part, lambda s: to_int8(s, only=key))
    for attempt in (lambda: load_model(pipeline), lambda: import_diffusers(str(pipeline), tmp_path / "out")):
        with pytest.raises(ModelLoadError) as caught:
            attempt()
        assert_clean_refusal(caught.value, str(pipeline / part), repr(key), "int8", "floating-point")
    assert not (tmp_path / "out").exists()


def test_a_whole_int8_text_encoder_is_refused_but_integer_buffers_are_not(pipeline, tmp_path):
    rewrite(pipeline / TEXT_FILE, lambda s: {**s, "text_model.embeddings.position_ids": torch.arange(77)[None]})
    assert load_model(pipeline).text_encoder is not None  # an int64 position_ids buffer is fine
    rewrite(pipeline / TEXT_FILE, to_int8)
    with pytest.raises(ModelLoadError, match="is int8, but CLIPTextModel needs floating-point"):
        import_diffusers(str(pipeline), tmp_path / "out")


def test_float16_and_bfloat16_weights_load_into_float32_networks(pipeline):
    reference = load_component(pipeline / "unet", "unet").state_dict()
    rewrite(pipeline / UNET_FILE, lambda s: {k: v.to(torch.float16) for k, v in s.items()})
    half = load_component(pipeline / "unet", "unet").state_dict()
    assert all(v.dtype == torch.float32 and torch.equal(v, reference[k].half().float()) for k, v in half.items())
    rewrite(pipeline / VAE_FILE, lambda s: {k: v.to(torch.bfloat16) for k, v in s.items()})
    assert {p.dtype for p in load_component(pipeline / "vae", "autoencoder").parameters()} == {torch.float32}


# --- 5. memory: one component at a time, files streamed, output equal to the old in-memory path ------------------

def test_import_holds_one_network_at_a_time(pipeline, tmp_path, monkeypatch):
    alive: list[weakref.ref] = []

    def tracked(loader):
        def load(*args, **kwargs):
            assert [ref for ref in alive if ref() is not None] == [], "a previous component is still in memory"
            loaded = loader(*args, **kwargs)
            if isinstance(loaded, torch.nn.Module):
                alive.append(weakref.ref(loaded))
            return loaded
        return load

    monkeypatch.setattr(importer, "load_component", tracked(importer.load_component))
    monkeypatch.setattr(importer, "load_text_part", tracked(importer.load_text_part))
    import medground.loading as loading

    monkeypatch.setattr(loading, "load_model", lambda *a, **k: pytest.fail("import must not load the whole model"))
    import_diffusers(str(pipeline), tmp_path / "out")
    assert len(alive) == 3 and all(ref() is None for ref in alive)


def test_weight_files_are_copied_byte_for_byte_and_hashed(pipeline, tmp_path):
    out = import_diffusers(str(pipeline), tmp_path / "out")
    for part in (UNET_FILE, VAE_FILE, TEXT_FILE):
        assert sha256_of(out / part) == sha256_of(pipeline / part)
    files = json.loads((out / "model.json").read_text())["provenance"]["files"]
    recorded = {f["file"]: f["sha256"] for f in files["unet"]}
    assert recorded == {p.name: sha256_of(p) for p in (pipeline / "unet").iterdir()}


def test_legacy_bin_components_are_converted_to_safetensors(pipeline, tmp_path):
    unet = load_file(str(pipeline / UNET_FILE))
    (pipeline / UNET_FILE).unlink()
    torch.save(unet, pipeline / "unet" / "diffusion_pytorch_model.bin")
    text = load_file(str(pipeline / TEXT_FILE))
    (pipeline / TEXT_FILE).unlink()
    torch.save(text, pipeline / "text_encoder" / "pytorch_model.bin")
    out = import_diffusers(str(pipeline), tmp_path / "out")
    converted = load_file(str(out / UNET_FILE))
    assert converted.keys() == unet.keys() and all(torch.equal(converted[k], unet[k]) for k in unet)
    assert (out / TEXT_FILE).is_file() and not list(out.rglob("*.bin"))
    ours = load_model(out).text_encoder.state_dict()
    assert all(torch.equal(ours[k], v) for k, v in text.items() if k in ours)


def test_a_sharded_unet_is_copied_with_its_index(pipeline, tmp_path):
    state = load_file(str(pipeline / UNET_FILE))
    (pipeline / UNET_FILE).unlink()
    keys = sorted(state)
    shards = {"part-1.safetensors": keys[::2], "part-2.safetensors": keys[1::2]}
    for shard, names in shards.items():
        save_file({k: state[k] for k in names}, str(pipeline / "unet" / shard))
    (pipeline / "unet" / "diffusion_pytorch_model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {k: shard for shard, names in shards.items() for k in names}}))
    out = import_diffusers(str(pipeline), tmp_path / "out")
    assert sorted(p.name for p in (out / "unet").iterdir()) == [
        "config.json", "diffusion_pytorch_model.safetensors.index.json", "part-1.safetensors", "part-2.safetensors"]
    loaded = load_model(out).unet.state_dict()
    assert all(torch.equal(loaded[k], v) for k, v in state.items())


def test_default_layers_without_the_meta_device_are_the_same(pipeline, tmp_path, monkeypatch):
    expected = load_model(pipeline).layers_at_quarter_resolution()
    import medground.backbones.diffusers as diffusers

    grid_sides = diffusers._grid_sides

    def no_meta(unet_config, vae_config, image_size, device):
        if device.type == "meta":
            raise NotImplementedError("no meta kernel")
        return grid_sides(unet_config, vae_config, image_size, device)

    monkeypatch.setattr(diffusers, "_grid_sides", no_meta)
    out = import_diffusers(str(pipeline), tmp_path / "out")
    assert json.loads((out / "model.json").read_text())["grounding_defaults"]["cross_attention_layers"] == expected


def test_a_vae_whose_latents_do_not_fit_the_unet_is_refused(pipeline, tmp_path):
    config = json.loads((pipeline / "vae" / "config.json").read_text())
    (pipeline / "vae" / "config.json").write_text(json.dumps({**config, "latent_channels": 8}))
    with pytest.raises(ModelLoadError, match="takes 4 latent channels, but the autoencoder .* gives 8"):
        import_diffusers(str(pipeline), tmp_path / "out")
    assert not (tmp_path / "out").exists()
