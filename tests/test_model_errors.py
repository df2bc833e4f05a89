"""User mistakes with checkpoints, CLIP weights and the language-model endpoint: each one
reaches the user as one ``salip: error:`` line that says what to do, never a traceback or
an "unexpected" error, and never after a minute of retries."""

from __future__ import annotations

import collections
import json
import pickle
import shutil
import socket
import time
import zipfile
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from PIL import Image

from salip.apps.cli import main
from salip.core.errors import ModelError
from salip.models import clip_hub
from salip.models.clip import load_clip
from salip.models.registry import salip_home
from salip.models.sam import load_sam
from tests.hub_server import place_in_hub_cache
from tests.llm_server import LoopbackLLM, Reply
from tests.tiny_models import make_tiny_sam, register_tiny_clip

SAM_HINT = ("vit_b", "salip models download", "segment-anything .pth state dict")
TORCH_NOISE = ("weights_only", "torch.load", "PyTorch 2.6", "WeightsUnpickler", "miniz")


def clip_cache_dir() -> Path:
    """Where salip has open_clip cache CLIP weights."""
    return salip_home() / "clip"


def error_line(capsys: pytest.CaptureFixture[str], argv: list[str]) -> str:
    """Run the CLI, expect exit code 1 and exactly one ``salip: error:`` line; return it."""
    code = main(argv)
    err = capsys.readouterr().err
    lines = [line for line in err.splitlines() if line.strip()]
    assert code == 1, err
    assert len(lines) == 1, err
    assert lines[0].startswith("salip: error: "), err
    assert "Traceback" not in err and "unexpected" not in err, err
    return lines[0]


def assert_one_line(exc: BaseException, limit: int = 500) -> str:
    """The exception's message, checked to be one line of reasonable length."""
    message = str(exc)
    assert "\n" not in message and "\r" not in message, message
    assert len(message) <= limit, message
    return message


@pytest.fixture
def image(tmp_path: Path) -> Path:
    """A small grey PNG slice."""
    path = tmp_path / "slice.png"
    rng = np.random.default_rng(0)
    Image.fromarray(rng.integers(0, 255, (64, 64), dtype=np.uint8)).save(path)
    return path


@pytest.fixture
def closed_port() -> int:
    """A loopback port nothing listens on."""
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


# --- SAM checkpoints -----------------------------------------------------------------------


class Opaque:
    """A class that weights_only=True must refuse to unpickle."""


class WritesMarker:
    """Unpickling this opens (creates) a file: a stand-in for a malicious checkpoint."""

    def __init__(self, path: Path) -> None:
        self.path = str(path)

    def __reduce__(self):  # noqa: ANN204
        return (open, (self.path, "w"))


def _text(path: Path) -> None:
    path.write_text("model weights are on the shared drive\n")


def _empty(path: Path) -> None:
    path.write_bytes(b"")


def _truncated(path: Path) -> None:
    make_tiny_sam(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _random_bytes(path: Path) -> None:
    path.write_bytes(np.random.default_rng(1).bytes(4096).replace(b"PK", b"pk"))


def _folder(path: Path) -> None:
    path.mkdir()
    (path / "inside.txt").write_text("x")


def _zip_not_torch(path: Path) -> None:
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("notes.txt", "not weights")


def _object_in_checkpoint(path: Path) -> None:
    torch.save({"x": collections.OrderedDict(), "obj": Opaque()}, path)


def _plain_pickle(path: Path) -> None:
    path.write_bytes(pickle.dumps(Opaque(), protocol=2))


def _pickle_protocol_5(path: Path) -> None:
    path.write_bytes(pickle.dumps({"a": [1, 2]}, protocol=5))


def _lfs_pointer(path: Path) -> None:
    path.write_text("version https://git-lfs.github.com/spec/v1\noid sha256:ab\nsize 375042383\n")


def _html_page(path: Path) -> None:
    path.write_text("<!DOCTYPE html>\n<html><body><h1>403 Forbidden</h1></body></html>\n")


BAD_SAM_FILES = {
    "text": (_text, "is a text file, not a checkpoint"),
    "empty": (_empty, "is empty"),
    "truncated": (_truncated, "truncated or damaged"),
    "random-bytes": (_random_bytes, "not a PyTorch checkpoint"),
    "folder": (_folder, "is a folder"),
    "zip-not-torch": (_zip_not_torch, "zip archive but not a PyTorch checkpoint"),
    "object": (_object_in_checkpoint, "Python objects besides tensors (tests.test_model_errors"),
    "plain-pickle": (_plain_pickle, "Python objects besides tensors"),
    "pickle-5": (_pickle_protocol_5, "is a Python pickle, not a PyTorch weights file"),
    "lfs-pointer": (_lfs_pointer, "git lfs pull"),
    "html": (_html_page, "HTML page"),
}


@pytest.mark.parametrize("kind", list(BAD_SAM_FILES))
def test_bad_sam_checkpoint_is_one_line_with_the_fix(kind, tmp_path, image, capsys):
    make, says = BAD_SAM_FILES[kind]
    bad = tmp_path / "sam.pth"
    make(bad)
    out = tmp_path / "proposals.json"
    line = error_line(
        capsys, ["proposals", str(image), "-o", str(out), "-q", "--sam-checkpoint", str(bad)]
    )
    assert str(bad) in line and says in line
    assert all(hint in line for hint in SAM_HINT), line
    assert not any(noise in line for noise in TORCH_NOISE), line
    assert len(line) < 450 and not out.exists()
    with pytest.raises(ModelError) as caught:
        load_sam(str(bad))
    assert_one_line(caught.value)


@pytest.mark.parametrize("save", ["torch.save", "pickle"])
def test_malicious_pickle_is_refused_without_running_it(save, tmp_path, capsys):
    marker = tmp_path / "marker"
    bad = tmp_path / "evil.pth"
    if save == "torch.save":
        torch.save({"weight": torch.zeros(1), "payload": WritesMarker(marker)}, bad)
    else:
        bad.write_bytes(pickle.dumps(WritesMarker(marker), protocol=2))
    assert not marker.exists()
    with pytest.raises(ModelError, match="can run code") as caught:
        load_sam(str(bad))
    assert_one_line(caught.value)
    assert not marker.exists()


def test_sam_checkpoint_that_is_not_a_state_dict(tmp_path):
    tensor = tmp_path / "tensor.pth"
    torch.save(torch.zeros(3), tensor)
    with pytest.raises(ModelError, match=r"holds a Tensor, not a state dict; pass") as caught:
        load_sam(str(tensor))
    assert_one_line(caught.value)
    int_keys = tmp_path / "int_keys.pth"
    torch.save({1: torch.zeros(1), "model": {2: torch.zeros(1)}}, int_keys)
    with pytest.raises(ModelError, match="not a SAM checkpoint") as caught:
        load_sam(str(int_keys))
    assert_one_line(caught.value)


def test_sam_weights_that_do_not_fit_are_one_line(tmp_path, tiny_sam_path):
    state = torch.load(tiny_sam_path, weights_only=True)
    state["image_encoder.adapter.weight"] = torch.zeros(2)  # e.g. a SAM-Med2D adapter
    path = tmp_path / "adapter.pth"
    torch.save(state, path)
    with pytest.raises(ModelError, match=r"do not fit .*Unexpected key.*adapter") as caught:
        load_sam(str(path))
    message = assert_one_line(caught.value)
    assert "Error(s) in loading" not in message


# --- the language-model endpoint -----------------------------------------------------------


@pytest.fixture
def llm():
    server = LoopbackLLM().start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _llm_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-key")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)


def generate_args(base_url: str, folder: Path, retries: int = 0) -> list[str]:
    return ["prompts", "generate", "--organ", "liver", "--modality", "ct", "--base-url",
            base_url, "--prompts-dir", str(folder), "--max-retries", str(retries),
            "--timeout", "5", "-q"]  # fmt: skip


def _chat(**fields) -> str:
    return json.dumps(
        {"id": "x", "object": "chat.completion", "created": 0, "model": "m", **fields}
    )


HTML_502 = "<html>\n<head><title>502 Bad Gateway</title></head>\n<body>nginx</body>\n</html>\n"
ENDPOINT_REPLIES = {
    "not-json-200": (Reply(raw="Internal proxy says hello"), "not a chat completion (not JSON)"),
    "html-200": (Reply(raw=HTML_502, content_type="text/html"), "answered with text"),
    "html-502": (
        Reply(status=502, raw=HTML_502, content_type="text/html", headers={"retry-after-ms": "5"}),
        "HTTP 502 after 2 attempt(s) (an HTML error page",
    ),
    "json-list": (Reply(raw="[1, 2]"), "JSON without 'choices'"),
    "no-choices": (Reply(raw=_chat()), "JSON without 'choices'"),
    "empty-choices": (Reply(raw=_chat(choices=[])), "answered with no choices"),
    "choices-not-a-list": (Reply(raw=_chat(choices="oops")), "JSON without 'choices'"),
    "content-null": (Reply(content=None), "reply has no text (content is None)"),
    "no-message": (Reply(raw=_chat(choices=[{"index": 0}])), "reply has no text"),
    "unauthorized": (Reply(status=401), "HTTP 401 (Error code: 401"),
}
WHAT_TO_DO = ("--base-url", "OPENAI_API_KEY", "--model", "try later", "try again")


@pytest.mark.parametrize("kind", list(ENDPOINT_REPLIES))
def test_unusable_endpoint_reply_is_one_line(kind, llm, tmp_path, capsys):
    reply, says = ENDPOINT_REPLIES[kind]
    llm.script = [reply]
    folder = tmp_path / "prompts"
    line = error_line(capsys, generate_args(llm.base_url, folder, retries=1))
    assert line.startswith(f"salip: error: liver: {llm.base_url}") and says in line, line
    assert any(fix in line for fix in WHAT_TO_DO), line
    assert "<html" not in line and "nginx" not in line
    assert not folder.exists()  # nothing written


def test_http_401_is_not_reported_as_retried(llm, tmp_path, capsys):
    llm.script = [Reply(status=401)]
    line = error_line(capsys, generate_args(llm.base_url, tmp_path / "p", retries=3))
    assert "check OPENAI_API_KEY" in line and "attempt" not in line
    assert len(llm.requests) == 1


def test_refused_connection_is_one_line(closed_port, tmp_path, capsys):
    start = time.monotonic()
    url = f"http://127.0.0.1:{closed_port}/v1"
    line = error_line(capsys, generate_args(url, tmp_path / "p"))
    assert f"cannot reach {url} after 1 attempt(s)" in line and "--base-url" in line
    assert time.monotonic() - start < 10


@pytest.mark.parametrize(
    "url", ["localhost:8000/v1", "ftp://host/v1", "http://[::1", "http://h:99999"]
)
def test_malformed_base_url_is_one_line(url, tmp_path, capsys):
    line = error_line(capsys, generate_args(url, tmp_path / "p"))
    assert "is not an http(s) URL" in line and "http://localhost:8000/v1" in line


# --- CLIP: offline hub, cache, local files -------------------------------------------------


def test_uncached_clip_tag_with_unreachable_hub_fails_fast(online, closed_port, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    with pytest.raises(ModelError) as caught:
        load_clip("ViT-B-32", "openai")
    assert time.monotonic() - start < 6
    message = assert_one_line(caught.value)
    assert "CLIP weights ViT-B-32 'openai' are not in the cache" in message
    assert str(clip_cache_dir()) in message and f"127.0.0.1:{closed_port}" in message
    assert "--clip-pretrained FILE" in message and "--clip-model local-dir:PATH" in message


def test_default_clip_offline_through_the_cli(online, closed_port, monkeypatch, tmp_path,
                                              image, tiny_sam_path, capsys):  # fmt: skip
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    line = error_line(
        capsys,
        ["segment", str(image), "--organ", "liver", "--modality", "ct", "-o", str(tmp_path / "out.png"), "-q",
         "--sam-checkpoint", str(tiny_sam_path), "--device", "cpu"],
    )  # fmt: skip
    assert time.monotonic() - start < 20
    assert "CLIP weights ViT-L-14 'openai' are not in the cache" in line
    assert "--clip-pretrained FILE" in line and "local-dir:PATH" in line


def test_hub_offline_fails_at_once_without_network(network_calls, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(ModelError, match="HF_HUB_OFFLINE is set; unset it") as caught:
        load_clip("ViT-B-32", "openai")
    assert_one_line(caught.value)
    assert network_calls == []


def test_uncached_hf_hub_model_with_unreachable_hub_fails_fast(online, closed_port, monkeypatch):
    monkeypatch.setenv("HF_ENDPOINT", f"http://127.0.0.1:{closed_port}")
    start = time.monotonic()
    with pytest.raises(ModelError, match="CLIP model hf-hub:org/repo is not in the cache"):
        load_clip("hf-hub:org/repo")
    assert time.monotonic() - start < 6


@pytest.fixture
def tiny_tag(tiny_clip_dir: Path, monkeypatch: pytest.MonkeyPatch) -> tuple[str, str, dict]:
    """The tiny CLIP as an open_clip name with a pretrained tag served from a hub repo."""
    name = register_tiny_clip(tiny_clip_dir)
    cfg = {"url": "", "hf_hub": "salip-test/tiny-clip/", "mean": (0.5, 0.5, 0.5),
           "std": (0.25, 0.25, 0.25), "interpolation": "bilinear", "resize_mode": "squash"}  # fmt: skip
    monkeypatch.setitem(open_clip.pretrained._PRETRAINED, name, {"tiny": cfg})
    return name, "tiny", cfg


def test_cached_clip_tag_loads_without_network(tiny_tag, tiny_clip_dir, network_calls,
                                               monkeypatch):  # fmt: skip
    name, tag, _ = tiny_tag
    weights = tiny_clip_dir / "open_clip_pytorch_model.bin"
    cached = place_in_hub_cache("salip-test/tiny-clip", "open_clip_pytorch_model.bin", weights)

    def no_probe(url, timeout=0):
        raise AssertionError(f"probed {url}")

    monkeypatch.setattr(clip_hub, "probe", no_probe)
    loaded = load_clip(name, tag)
    assert network_calls == []
    assert loaded.identity() == {
        "model": name,
        "pretrained": tag,
        "quick_gelu": False,
        "quick_gelu_from": f"pretrained tag {name} '{tag}'",
    }
    # The same model and transform as open_clip's own tag path, fed the cached file.
    monkeypatch.setattr(open_clip.factory, "download_pretrained", lambda *a, **k: str(cached))
    model, _, preprocess = open_clip.create_model_and_transforms(name, pretrained=tag)
    assert str(loaded.preprocess) == str(preprocess)
    assert "squash" in str(preprocess) or "bilinear" in str(preprocess).lower()
    for key, value in model.state_dict().items():
        torch.testing.assert_close(loaded.model.state_dict()[key], value)


def test_damaged_cached_clip_weights_say_delete_and_redownload(tiny_tag, network_calls):
    name, tag, _ = tiny_tag
    bad = Path(clip_cache_dir().parent / "bad.bin")
    bad.parent.mkdir(parents=True, exist_ok=True)
    bad.write_text("partial")
    cached = place_in_hub_cache("salip-test/tiny-clip", "open_clip_pytorch_model.bin", bad)
    with pytest.raises(ModelError, match="delete the file to download it again") as caught:
        load_clip(name, tag)
    message = assert_one_line(caught.value)
    assert str(cached) in message and "is a text file" in message


def test_local_dir_never_touches_the_network(tiny_clip_dir, network_calls, monkeypatch):
    monkeypatch.setattr(clip_hub, "probe", lambda *a, **k: pytest.fail("probed"))
    load_clip(f"local-dir:{tiny_clip_dir}")
    assert network_calls == []


def _copy_clip(src: Path, dst: Path) -> Path:
    shutil.copytree(src, dst)
    return dst


LOCAL_DIR_PROBLEMS = {
    "missing": (lambda d: d.parent / "nowhere", "no such folder"),
    "a-file": (lambda d: d / "open_clip_pytorch_model.bin", "it is a file, not a folder"),
    "no-config": (
        lambda d: (d / "open_clip_config.json").unlink() or d,
        "has no open_clip_config.json",
    ),
    "bad-json": (
        lambda d: (d / "open_clip_config.json").write_text("{oops") and d,
        "is not readable JSON",
    ),
    "no-model-cfg": (
        lambda d: (d / "open_clip_config.json").write_text("{}") and d,
        "has no 'model_cfg' object",
    ),
    "no-weights": (
        lambda d: (d / "open_clip_pytorch_model.bin").unlink() or d,
        "holds no weights file",
    ),
    "text-weights": (
        lambda d: (d / "open_clip_pytorch_model.bin").write_text("x") and d,
        "is a text file, not a checkpoint",
    ),
}


@pytest.mark.parametrize("kind", list(LOCAL_DIR_PROBLEMS))
def test_bad_local_dir_is_one_line(kind, tiny_clip_dir, tmp_path, network_calls):
    spoil, says = LOCAL_DIR_PROBLEMS[kind]
    folder = spoil(_copy_clip(tiny_clip_dir, tmp_path / "clip"))
    with pytest.raises(ModelError, match="CLIP") as caught:
        load_clip(f"local-dir:{folder}")
    message = assert_one_line(caught.value)
    assert says in message, message
    assert network_calls == []


def test_bad_local_dir_through_the_cli(tiny_clip_dir, tmp_path, image, tiny_sam_path, capsys):
    folder = _copy_clip(tiny_clip_dir, tmp_path / "clip")
    (folder / "open_clip_config.json").unlink()
    line = error_line(
        capsys,
        ["segment", str(image), "--organ", "liver", "--modality", "ct", "-o", str(tmp_path / "out.png"), "-q",
         "--sam-checkpoint", str(tiny_sam_path), "--clip-model", f"local-dir:{folder}"],
    )  # fmt: skip
    assert "has no open_clip_config.json" in line


def _object_weights(path: Path) -> None:
    torch.save({"visual.proj": torch.zeros(1), "obj": Opaque()}, path)


def _truncated_clip_weights(path: Path, tiny_clip_dir: Path) -> None:
    data = (tiny_clip_dir / "open_clip_pytorch_model.bin").read_bytes()
    path.write_bytes(data[: len(data) // 2])


BAD_CLIP_WEIGHTS = {
    "text": (lambda p, d: _text(p), "is a text file, not a checkpoint"),
    "object": (lambda p, d: _object_weights(p), "Python objects besides tensors"),
    "truncated": (_truncated_clip_weights, "truncated or damaged"),
    "sam-weights": (lambda p, d: make_tiny_sam(p), "do not fit CLIP"),
    "folder": (lambda p, d: _folder(p), "is a folder; pass the weights file inside it"),
}


@pytest.mark.parametrize("kind", list(BAD_CLIP_WEIGHTS))
def test_bad_clip_pretrained_file_is_one_line(kind, tiny_clip_dir, tmp_path, network_calls):
    make, says = BAD_CLIP_WEIGHTS[kind]
    name = register_tiny_clip(tiny_clip_dir)
    bad = tmp_path / "weights.bin"
    make(bad, tiny_clip_dir)
    with pytest.raises(ModelError) as caught:
        load_clip(name, str(bad))
    message = assert_one_line(caught.value)
    assert says in message and str(bad) in message, message
    assert not any(noise in message for noise in TORCH_NOISE), message
    assert network_calls == []


# --- SAM checkpoint download -----------------------------------------------------------------


def test_download_into_an_unwritable_cache_is_one_line(tmp_path, monkeypatch, capsys):
    home = tmp_path / "home-is-a-file"
    home.write_text("")
    monkeypatch.setenv("SALIP_HOME", str(home))
    line = error_line(
        capsys,
        ["models", "download", "vit_b", "--mirror", "http://127.0.0.1:9", "--no-progress", "-q"],
    )
    assert "cannot write to" in line and "set SALIP_HOME to a writable folder" in line


def test_hugging_face_text_tower_without_transformers_is_one_line(tiny_clip_dir, tmp_path,
                                                                  monkeypatch, network_calls):  # fmt: skip
    """BiomedCLIP-like configs name a transformers text model; without the package the
    error says what to install, before anything is built."""
    import importlib.util

    folder = _copy_clip(tiny_clip_dir, tmp_path / "clip")
    config = json.loads((folder / "open_clip_config.json").read_text())
    config["model_cfg"]["text_cfg"] = {"hf_model_name": "org/bert", "hf_tokenizer_name": "org/bert"}
    (folder / "open_clip_config.json").write_text(json.dumps(config))
    real = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda n, *a: None if n == "transformers" else real(n, *a)
    )
    with pytest.raises(ModelError) as caught:
        load_clip(f"local-dir:{folder}")
    message = assert_one_line(caught.value)
    assert "Hugging Face text tower (org/bert)" in message and "pip install 'salip[hf]'" in message
    assert network_calls == []


def test_hf_hub_model_whose_weights_cannot_be_fetched_is_refused(tiny_clip_dir, monkeypatch):
    """open_clip builds random weights when an hf-hub: download fails; salip refuses."""
    from tests.hub_server import serving_hub

    with serving_hub(monkeypatch) as hub:
        hub.add("org/config-only", "open_clip_config.json", tiny_clip_dir / "open_clip_config.json")
        with pytest.raises(ModelError) as caught:
            load_clip("hf-hub:org/config-only")
    message = assert_one_line(caught.value)
    assert "weights of CLIP hf-hub:org/config-only could not be downloaded" in message
    assert "random weights" in message


def test_hf_hub_model_downloads_from_the_hub(tiny_clip_dir, monkeypatch):
    """Config and weights come from the (loopback) hub on first use, from the cache after."""
    from tests.hub_server import serving_hub

    with serving_hub(monkeypatch) as hub:
        for name in ("open_clip_config.json", "open_clip_pytorch_model.bin"):
            hub.add("org/tiny", name, tiny_clip_dir / name)
        first = load_clip("hf-hub:org/tiny")
        seen = len(hub.requests)
        assert seen > 0
        second = load_clip("hf-hub:org/tiny")
        assert len(hub.requests) == seen  # all cached: offline, no request
    for key, value in first.model.state_dict().items():
        torch.testing.assert_close(second.model.state_dict()[key], value)
