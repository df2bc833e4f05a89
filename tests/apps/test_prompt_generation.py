"""`salip prompts generate` against a loopback OpenAI-compatible server, via the real client."""

from __future__ import annotations

import json
import logging
import shutil
from pathlib import Path

import pytest

from salip.apps.cli import main
from salip.apps.prompt_generation import TEMPLATE_VERSION, parse_reply, template_sha256
from salip.core.errors import GenerationError
from salip.core.prompts import load_prompts, prompts_dir, read_prompt_file
from tests.llm_server import LoopbackLLM, Reply, descriptions_reply

KEY = "sk-test-DO-NOT-LEAK-0123456789"
GOOD = [f"Description number {i} of a smooth grey organ beside the spine." for i in range(8)]


@pytest.fixture
def llm():
    server = LoopbackLLM().start()
    yield server
    server.stop()


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    """A copy of the packaged prompt set, hand-written entries included."""
    folder = tmp_path / "prompts"
    shutil.copytree(prompts_dir(), folder, ignore=shutil.ignore_patterns("*.py", "__pycache__"))
    return folder


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("SALIP_PROMPTS_DIR", raising=False)


def snapshot(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir()) if p.is_file()}


def generate(llm: LoopbackLLM, folder: Path, *args: str) -> int:
    return main(
        ["prompts", "generate", "--base-url", llm.base_url, "--prompts-dir", str(folder),
         "--max-retries", "2", *args]
    )  # fmt: skip


def test_good_reply_lands_with_provenance(llm, tmp_path, capsys):
    folder = tmp_path / "new" / "set"  # missing: generate creates it
    llm.script = [descriptions_reply(GOOD)]
    rc = generate(llm, folder, "--organ", "liver", "--modality", "ct", "--n", "8", "-vv",
                  "--model", "my-model", "--temperature", "0.3", "--seed", "7")  # fmt: skip
    assert rc == 0
    assert f"wrote {folder / 'liver.json'}" in capsys.readouterr().err
    data = read_prompt_file(folder / "liver.json")
    entry = data["entries"]["ct"]
    assert entry["descriptions"] == GOOD
    assert entry["source"] == "generated"
    assert entry["generator"] == "my-model" and entry["served_model"] == "loopback-llm-1"
    assert entry["template_version"] == TEMPLATE_VERSION
    assert entry["template_sha256"] == template_sha256()
    assert entry["sampling"] == {"temperature": 0.3, "seed": 7, "n": 8}
    assert entry["endpoint"] == llm.base_url and entry["date"]
    # The request: the real client, the key as a bearer token, a JSON-object reply asked for.
    (request,) = llm.requests
    assert request["path"] == "/v1/chat/completions"
    assert request["headers"]["authorization"] == f"Bearer {KEY}"
    body = request["body"]
    assert body["model"] == "my-model" and body["temperature"] == 0.3 and body["seed"] == 7
    assert body["response_format"] == {"type": "json_object"}
    system, user = body["messages"]
    assert "what the structure looks like" in system["content"]
    assert "Never write instructions" in system["content"]
    assert "8 different" in user["content"] and "the liver" in user["content"]
    assert "computed tomography" in user["content"]
    assert all(KEY.encode() not in p.read_bytes() for p in folder.rglob("*") if p.is_file())
    assert load_prompts("liver", "ct", folder).provenance["source"] == "generated"


def test_key_is_never_logged_or_written(llm, tmp_path, caplog):
    """Every logger at DEBUG, the openai client's included: the key appears nowhere."""
    from salip.apps.prompt_generation import GenerationConfig, generate_prompts
    from salip.core.organs import get_organ

    caplog.set_level(logging.DEBUG)
    llm.script = [Reply(status=429, headers={"retry-after-ms": "1"}), descriptions_reply(GOOD)]
    config = GenerationConfig(base_url=llm.base_url, max_retries=1)
    (path,) = generate_prompts([get_organ("spleen")], "ct", config=config, prompts_folder=tmp_path)
    assert any(r.name.startswith("openai") for r in caplog.records)  # its debug log was on
    assert "Retrying request" in caplog.text or "retry" in caplog.text.lower()
    assert KEY not in caplog.text
    assert KEY.encode() not in path.read_bytes()
    assert llm.requests[-1]["headers"]["authorization"] == f"Bearer {KEY}"


def test_base_url_from_environment(llm, cache, monkeypatch):
    monkeypatch.setenv("OPENAI_BASE_URL", llm.base_url)
    llm.script = [descriptions_reply(GOOD[:3])]
    rc = main(["prompts", "generate", "--organ", "heart", "--modality", "xray", "--n", "3",
               "--prompts-dir", str(cache), "--force"])  # fmt: skip
    assert rc == 0 and len(llm.requests) == 1
    assert read_prompt_file(cache / "heart.json")["entries"]["xray"]["descriptions"] == GOOD[:3]


@pytest.mark.parametrize(
    ("reply", "message"),
    [
        (Reply(content="Here are some descriptions: the liver is big."), "not JSON"),
        (Reply(content=json.dumps({"items": GOOD})), "not a JSON object"),
        (Reply(content=json.dumps(GOOD)), "not a JSON object"),
        (descriptions_reply([*GOOD[:7], "  "]), "description 8 is empty"),
        (descriptions_reply([*GOOD[:7], 42]), "description 8 is empty or not a string"),
        (descriptions_reply([*GOOD[:7], GOOD[0].upper()]), "repeats an earlier one"),
        (descriptions_reply([*GOOD[:7], "x" * 400]), "400 characters"),
        (descriptions_reply(GOOD[:5]), "gave 5 descriptions, not 8"),
        (Reply(content=""), "reply is empty"),
    ],
    ids=["prose", "wrong-key", "bare-list", "blank", "non-string", "duplicate", "too-long",
         "too-few", "empty"],
)  # fmt: skip
def test_malformed_reply_is_refused_and_cache_unchanged(llm, cache, capsys, reply, message):
    before = snapshot(cache)
    # Two organs: the first reply is good, the second bad; nothing may be written.
    llm.script = [descriptions_reply(GOOD), reply]
    rc = generate(llm, cache, "--organ", "liver,spleen", "--modality", "mr", "--force")
    err = capsys.readouterr().err
    assert rc == 1
    last = err.strip().splitlines()[-1]
    assert last.startswith("salip: error: spleen:") and message in last
    assert snapshot(cache) == before
    assert len(llm.requests) == 2  # malformed replies are not retried


def test_rate_limit_is_retried_then_lands(llm, cache):
    llm.script = [
        Reply(status=429, headers={"retry-after-ms": "10"}),
        Reply(status=503, headers={"retry-after-ms": "10"}),
        descriptions_reply(GOOD),
    ]
    rc = generate(llm, cache, "--organ", "celiac_trunk", "--modality", "ct", "--force")
    assert rc == 0
    assert len(llm.requests) == 3
    entry = read_prompt_file(cache / "celiac_trunk.json")["entries"]["ct"]
    assert entry["source"] == "generated" and entry["descriptions"] == GOOD


def test_persistent_server_error_gives_up_and_cache_unchanged(llm, cache, capsys):
    before = snapshot(cache)
    llm.script = [Reply(status=500, headers={"retry-after-ms": "10"})]
    rc = generate(llm, cache, "--organ", "liver", "--modality", "ct", "--force")
    err = capsys.readouterr().err
    assert rc == 1
    assert "answered HTTP 500 after 3 attempt(s)" in err and "try later" in err
    assert len(llm.requests) == 3  # 1 + --max-retries 2
    assert snapshot(cache) == before


def test_unreachable_endpoint_is_a_clear_error(cache, capsys):
    before = snapshot(cache)
    rc = main(["prompts", "generate", "--organ", "liver", "--modality", "ct", "--force",
               "--prompts-dir", str(cache), "--base-url", "http://127.0.0.1:9/v1",
               "--max-retries", "0"])  # fmt: skip
    assert rc == 1
    assert "cannot reach http://127.0.0.1:9/v1" in capsys.readouterr().err
    assert snapshot(cache) == before


def test_no_api_key_fails_before_any_request(llm, cache, capsys, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    before = snapshot(cache)
    llm.script = [descriptions_reply(GOOD)]
    rc = generate(llm, cache, "--organ", "liver", "--modality", "ct", "--force")
    assert rc == 1
    assert "OPENAI_API_KEY is not set" in capsys.readouterr().err
    assert llm.requests == []
    assert snapshot(cache) == before


def test_unwritable_prompt_folder_fails_before_any_request(llm, tmp_path, capsys):
    (tmp_path / "a_file").write_text("not a folder")
    llm.script = [descriptions_reply(GOOD)]
    rc = generate(llm, tmp_path / "a_file" / "prompts", "--organ", "liver", "--modality", "ct")
    assert rc == 1
    assert "cannot write prompts to" in capsys.readouterr().err
    assert llm.requests == []


def test_existing_entry_needs_force(llm, cache, capsys):
    before = snapshot(cache)
    llm.script = [descriptions_reply(GOOD)]
    rc = generate(llm, cache, "--organ", "liver", "--modality", "ct")
    err = capsys.readouterr().err
    assert rc == 1
    assert "already has ct descriptions for liver (hand-written)" in err and "--force" in err
    assert llm.requests == []  # refused before paying for a request
    assert snapshot(cache) == before
    # A modality the file lacks is added without --force; the others stay as they were.
    rc = generate(llm, cache, "--organ", "liver", "--modality", "xray")
    assert rc == 1  # liver is not an X-ray target in the vocabulary
    assert "not imaged by xray" in capsys.readouterr().err
    # --force replaces it, and says a hand-written entry went.
    rc = generate(llm, cache, "--organ", "liver", "--modality", "ct", "--force")
    assert rc == 0
    assert "replaced the hand-written ct descriptions of liver" in capsys.readouterr().err
    after = read_prompt_file(cache / "liver.json")["entries"]
    original = json.loads(before["liver.json"])["entries"]
    assert after["ct"]["descriptions"] == GOOD
    assert after["mr"] == original["mr"] and after["us"] == original["us"]


def test_all_writes_every_organ_of_the_modality(llm, tmp_path):
    from salip.core.organs import ORGANS

    folder = tmp_path / "xray_set"
    llm.script = [descriptions_reply(GOOD[:4])]
    assert generate(llm, folder, "--all", "--modality", "xray", "--n", "4") == 0
    expected = sorted(n for n, o in ORGANS.items() if "xray" in o.modalities)
    assert sorted(p.stem for p in folder.glob("*.json")) == expected
    assert len(llm.requests) == len(expected)


def test_parse_reply_accepts_a_fenced_object_and_keeps_n():
    text = "```json\n" + json.dumps({"descriptions": GOOD}) + "\n```"
    assert parse_reply(text, 3) == GOOD[:3]
    with pytest.raises(GenerationError, match="not JSON"):
        parse_reply("```json\n{oops\n```", 3)


def test_prompts_list_and_show(cache, capsys):
    assert main(["prompts", "list", "--prompts-dir", str(cache)]) == 0
    out = capsys.readouterr().out
    assert f"prompts: {cache}" in out
    assert "liver" in out and "hand-written" in out
    (cache / "broken.json").write_text("{}")
    assert main(["prompts", "list", "--prompts-dir", str(cache)]) == 0
    assert "broken" in capsys.readouterr().out.split("INVALID")[0].splitlines()[-1]
    assert main(["prompts", "show", "Postcava", "--modality", "ct",
                 "--prompts-dir", str(cache)]) == 0  # fmt: skip
    out = capsys.readouterr().out
    assert out.startswith("inferior_vena_cava") and "[ct] source: hand-written" in out
    assert "[mr]" not in out
    assert main(["prompts", "show", "liver", "--modality", "xray"]) == 1
    assert "no xray descriptions" in capsys.readouterr().err
    assert main(["prompts", "show", "livr"]) == 1
    assert "Did you mean: liver" in capsys.readouterr().err


def test_segment_reads_a_generated_prompt_set(llm, tmp_path, tiny_models, capsys):
    import salip
    from tests.conftest import SLICES, require_data

    folder = tmp_path / "mine"
    llm.script = [descriptions_reply(GOOD)]
    assert generate(llm, folder, "--organ", "liver", "--modality", "ct") == 0
    image = require_data(SLICES / "images" / "amos_0004_75.png")
    result = salip.segment(image, organs=["liver"], write=False, modality="ct",
                           points_per_side=4, prompts_dir=str(folder), **tiny_models)  # fmt: skip
    models = result.report["models"]
    assert models["prompts_dir"] == str(folder)
    assert models["prompts"]["liver"]["source"] == "generated"
    assert models["prompts"]["liver"]["generator"] == "gpt-4o-mini"
    # The folder lies over the packaged set: competitors and background come from there.
    classes = models["scoring"]["classes"]["liver"]
    assert classes[0] == "liver" and {"spleen", "background"} <= set(classes)
    assert "no prompts for" not in capsys.readouterr().err
