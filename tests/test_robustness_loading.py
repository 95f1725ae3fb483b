"""Checkpoints load only as tensors: safetensors or weights_only torch files; pickles that would run
code are refused before anything runs, with a clear error."""

from __future__ import annotations

import json
import re
import socket
import time
import warnings

import open_clip
import pytest
import torch
from safetensors.torch import save_file

import gradeclip_utils as ge
from gradeclip_utils.checkpoints import UnsafeCheckpointError, check_checkpoint

TINY_CONFIG = {"embed_dim": 16,
               "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "head_width": 16, "patch_size": 16},
               "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1}}
TINY_NAME = "gradeclip-robustness-tiny"


class WritesAFile:
    """Unpickling this object opens (creates) a marker file: a stand-in for arbitrary code."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def tiny_name(tmp_path_factory):
    """A tiny open_clip architecture registered under a name, so that ``pretrained=FILE`` can be used."""
    folder = tmp_path_factory.mktemp("configs")
    (folder / f"{TINY_NAME}.json").write_text(json.dumps(TINY_CONFIG))
    open_clip.add_model_config(folder)
    assert TINY_NAME in open_clip.list_models()
    return TINY_NAME


def tiny_state_dict(name=TINY_NAME):
    torch.manual_seed(0)
    model = open_clip.create_model(name, pretrained=None)
    return {k: v.clone().contiguous() for k, v in model.state_dict().items()}


def model_folder(path, weights_name=None, weights=None):
    path.mkdir(parents=True, exist_ok=True)
    (path / "open_clip_config.json").write_text(json.dumps({"model_cfg": TINY_CONFIG}))
    if weights_name is not None:
        if weights_name.endswith(".safetensors"):
            save_file(weights, str(path / weights_name))
        else:
            torch.save(weights, path / weights_name)
    return path


def malicious_checkpoint(path, marker):
    """A checkpoint that looks like weights but runs code (creates ``marker``) when unpickled."""
    torch.save({"state_dict": {"visual.proj": torch.zeros(2)}, "payload": WritesAFile(marker)}, path)
    return path


def test_the_malicious_checkpoint_really_runs_code_when_unpickled(tmp_path):
    """The control: a plain (unsafe) load of the test's payload does create its marker file."""
    marker = tmp_path / "control-ran"
    path = malicious_checkpoint(tmp_path / "control.pt", marker)
    assert not marker.exists()
    torch.load(path, weights_only=False)["payload"].close()
    assert marker.exists()


@pytest.mark.parametrize("suffix", [".pt", ".bin", ".pth", ".ckpt"])
def test_malicious_pretrained_file_is_refused_before_it_runs(tiny_name, tmp_path, suffix):
    marker = tmp_path / "pwned"
    path = malicious_checkpoint(tmp_path / f"weights{suffix}", marker)
    with pytest.raises(UnsafeCheckpointError, match=rf"refusing checkpoint .*weights{suffix}.*more than tensors"):
        ge.load_model(tiny_name, pretrained=str(path), device="cpu")
    assert not marker.exists()
    with pytest.raises(ValueError):  # UnsafeCheckpointError is a ValueError, for callers that catch those
        check_checkpoint(path)
    assert not marker.exists()


def test_malicious_checkpoint_in_a_model_folder_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    folder = model_folder(tmp_path / "model")
    malicious_checkpoint(folder / "open_clip_pytorch_model.bin", marker)
    for name in (str(folder), f"local-dir:{folder}"):
        with pytest.raises(UnsafeCheckpointError, match="open_clip_pytorch_model.bin"):
            ge.load_model(name, device="cpu")
    assert not marker.exists()


def test_torchscript_archive_is_refused(tiny_name, tmp_path):
    path = tmp_path / "scripted.pt"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", FutureWarning)  # TorchScript is deprecated, and still in use
        torch.jit.save(torch.jit.trace(torch.nn.Linear(2, 2), torch.zeros(1, 2)), str(path))
    with pytest.raises(UnsafeCheckpointError, match="TorchScript"):
        ge.load_model(tiny_name, pretrained=str(path), device="cpu")


def test_corrupt_and_missing_checkpoints_name_the_file(tiny_name, tmp_path):
    good = tmp_path / "good.pt"
    torch.save(tiny_state_dict(), good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[:500])
    with pytest.raises(ValueError, match=r"cut\.pt.*truncated or corrupt"):
        ge.load_model(tiny_name, pretrained=str(cut), device="cpu")
    fake = tmp_path / "fake.safetensors"
    fake.write_bytes(b"\x00" * 64)
    with pytest.raises(ValueError, match=r"fake\.safetensors"):
        ge.load_model(tiny_name, pretrained=str(fake), device="cpu")
    with pytest.raises(FileNotFoundError, match="nowhere.pt"):
        ge.load_model(tiny_name, pretrained=str(tmp_path / "nowhere.pt"), device="cpu")


def test_an_unknown_model_name_is_named_with_the_names_that_work(tmp_path):
    """A typo, or a folder without a config: one short error (not open_clip's list of every model) with the
    close names and the forms a name can take; before anything is built or downloaded."""
    from gradeclip_utils.loading import UnknownModelError

    with pytest.raises(UnknownModelError, match=r"'ViT-B-61' is no open_clip model name .*did you mean 'ViT-B-16'"):
        ge.load_model("ViT-B-61", device="cpu")
    with pytest.raises(RuntimeError, match=r"'hf:REPO_OR_FOLDER'.*'synthetic'") as error:  # open_clip's error type
        ge.load_model("no-such-model", device="cpu")
    assert isinstance(error.value, ge.GradEclipError) and "\n" not in str(error.value) and len(str(error.value)) < 400
    (tmp_path / "empty").mkdir()
    with pytest.raises(UnknownModelError, match="has no open_clip_config.json"):
        ge.load_model(str(tmp_path / "empty"), device="cpu")


@pytest.mark.parametrize("fmt", ["safetensors", "zip", "legacy"])
def test_plain_tensor_checkpoints_load(tiny_name, tmp_path, fmt):
    weights = tiny_state_dict()
    if fmt == "safetensors":
        path = tmp_path / "w.safetensors"
        save_file(weights, str(path))
    else:
        path = tmp_path / "w.pt"
        torch.save({"state_dict": weights}, path, _use_new_zipfile_serialization=fmt == "zip")
    loaded = ge.load_model(tiny_name, pretrained=str(path), device="cpu")
    state = loaded.model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in weights.items())
    assert loaded.pretrained == str(path)


def test_safetensors_folder_loads_its_weights(tiny_name, tmp_path):
    weights = tiny_state_dict()
    folder = model_folder(tmp_path / "model", "open_clip_model.safetensors", weights)
    loaded = ge.load_model(str(folder), device="cpu")
    assert torch.equal(loaded.model.visual.proj, weights["visual.proj"])
    explanation = ge.explain_image(loaded, torch.randn(1, 3, 32, 32), ["a dog"])
    assert explanation.maps.shape == (1, 1, 2, 2) and torch.isfinite(explanation.maps).all()


# ------------------------------------------------------------------------------- missing and offline
@pytest.mark.parametrize("spec", ["/no/such/folder", "./no/such/folder", "../no/such/folder", "~/no/such/folder"])
def test_a_missing_hugging_face_folder_is_named(spec):
    """A path-like ``hf:`` name that is no folder: "model folder not found", not transformers' "Repo id must be
    in the form ..."."""
    with pytest.raises(FileNotFoundError,
                       match=rf"model folder not found: {re.escape(spec)} \(hf: takes a local folder"):
        ge.load_model(f"hf:{spec}", device="cpu")


@pytest.fixture()
def no_network(monkeypatch):
    """Any connection attempt fails the test (the probe of the hub included)."""
    from gradeclip_utils import hub

    def refuse(*args, **kwargs):
        raise AssertionError("the network was asked")

    monkeypatch.setattr(socket, "create_connection", refuse)
    monkeypatch.setattr(socket.socket, "connect", refuse)
    hub._reachable.cache_clear()
    yield
    hub._reachable.cache_clear()


def test_offline_weights_fail_at_once_with_one_message(no_network, monkeypatch, tmp_path, capfd):
    """HF_HUB_OFFLINE=1 and weights not in the cache: the error comes before the model is built, with the ways
    the README documents (no ``local-dir:``), and nothing else is printed."""
    import open_clip  # noqa: F401  (imported before the clock starts)

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    capfd.readouterr()
    start = time.perf_counter()
    with pytest.raises(ge.WeightsUnavailableError) as error:
        ge.load_model("ViT-B-16", pretrained="openai", device="cpu", cache_dir=str(tmp_path))
    assert time.perf_counter() - start < 5
    message = str(error.value)
    assert "HF_HUB_OFFLINE is set" in message and "not in the local cache" in message
    assert "pretrained='/path/to/open_clip_model.safetensors'" in message and "load_model('/path/to/folder')" in message
    assert "local-dir" not in message and "load_model('synthetic')" in message
    assert capfd.readouterr() == ("", "")


def test_an_unreachable_hub_fails_at_once_too(monkeypatch, tmp_path, capfd):
    """Without HF_HUB_OFFLINE, one connection attempt (refused here) stands for huggingface_hub's retries."""
    import huggingface_hub.constants
    import open_clip  # noqa: F401

    from gradeclip_utils import hub

    attempts = []

    def unreachable(address, timeout=None):
        attempts.append(address)
        raise OSError("no network")

    monkeypatch.delenv("HF_HUB_OFFLINE", raising=False)
    monkeypatch.delenv("TRANSFORMERS_OFFLINE", raising=False)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(hub.urllib.request, "getproxies", lambda: {})
    monkeypatch.setattr(socket, "create_connection", unreachable)
    hub._reachable.cache_clear()
    try:
        capfd.readouterr()
        start = time.perf_counter()
        with pytest.raises(ge.WeightsUnavailableError, match="huggingface.co cannot be reached"):
            ge.load_model("ViT-B-16", pretrained="openai", device="cpu", cache_dir=str(tmp_path))
        assert time.perf_counter() - start < 5 and attempts == [("huggingface.co", 443)]
        assert capfd.readouterr() == ("", "")
    finally:
        hub._reachable.cache_clear()


def test_a_load_leaves_the_root_logger_as_it_was():
    """open_clip's module-level logging.info would install a stderr handler on the root logger (which prints
    every huggingface_hub warning twice): not during a load, and a handler the user set stays."""
    import logging

    from gradeclip_utils import hub

    root = logging.getLogger()
    before = list(root.handlers)
    root.handlers.clear()
    try:
        with hub.session(offline=False):
            logging.info("open_clip talks to the root logger")
        assert root.handlers == []
        mine = logging.StreamHandler()
        root.addHandler(mine)
        with hub.session(offline=True):
            logging.info("still mine")
            assert root.handlers == [mine]
        assert root.handlers == [mine]
    finally:
        root.handlers[:] = before
