"""New targets as data: `salip prompts generate --new` against a loopback OpenAI-compatible
server (the real ``openai`` client), user targets over built-in ones, free-text names."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
from pathlib import Path

import pytest

from salip.apps.cli import main
from salip.apps.new_targets import (
    DEFINITION_TEMPLATE_VERSION,
    definition_template_sha256,
    pair_member_names,
)
from salip.apps.prompt_generation import TEMPLATE_VERSION, template_sha256
from salip.core.errors import ConfigError, OrganError
from salip.core.organs import competitors, get_organ, pair_of, vocabulary
from salip.core.prompts import packaged_dir, read_prompt_file
from tests.conftest import REPO, SLICES, require_data
from tests.llm_server import LoopbackLLM, Reply, definition_reply, descriptions_reply

KEY = "sk-test-new-targets"
GOOD = [f"Description number {i} of a small smooth structure beside the trachea." for i in range(4)]
#: The model's definition of the thyroid gland; "notes" is an extra key, to be ignored.
THYROID = {
    "synonyms": ["thyroid", "thyroid lobes"],
    "modalities": ["ct", "us"],
    "regions": ["head", "thorax"],
    "laterality": "none",
    "window": "mediastinum",
    "notes": "an extra key",
}
PSOAS = {
    "synonyms": ["psoas"],
    "modalities": ["ct", "mr"],
    "regions": ["abdomen", "pelvis"],
    "laterality": "none",
    "window": "abdomen",
    "parts": ["left psoas muscle", "right psoas muscle"],
}


@pytest.fixture
def llm():
    server = LoopbackLLM(poll_interval=0.01).start()
    yield server
    server.stop()


@pytest.fixture(autouse=True)
def _env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("SALIP_PROMPTS_DIR", raising=False)


@pytest.fixture
def folder(tmp_path: Path) -> Path:
    """A user prompt set holding one valid hand-written target of its own."""
    folder = tmp_path / "my_prompts"
    folder.mkdir()
    pineal = {
        "format_version": 1,
        "organ": "pineal_gland",
        "definition": {
            "synonyms": ["pineal body"],
            "modalities": ["ct", "mr"],
            "regions": ["head"],
            "laterality": "none",
            "window": "brain",
            "source": "hand-written",
            "author": "a test",
            "date": "2026-01-01",
        },
        "entries": {
            "ct": {
                "descriptions": ["A small calcified dot behind the third ventricle."],
                "source": "hand-written",
                "author": "a test",
                "date": "2026-01-01",
            }
        },
    }
    (folder / "pineal_gland.json").write_text(json.dumps(pineal, indent=2))
    return folder


def hashes(folder: Path) -> dict[str, str]:
    """Every file of ``folder`` (hidden ones too) -> its SHA-256."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def generate(llm: LoopbackLLM, folder: Path | None, *args: str) -> int:
    where = ["--prompts-dir", str(folder)] if folder is not None else []
    return main(
        ["prompts", "generate", "--base-url", llm.base_url, "--max-retries", "0", "--n", "4",
         *where, *args]
    )  # fmt: skip


def error_line(capsys: pytest.CaptureFixture[str]) -> str:
    """The error line of a failed command (stderr's last line; there is exactly one)."""
    err = capsys.readouterr().err
    errors = [line for line in err.splitlines() if line.startswith("salip: error:")]
    assert len(errors) == 1, err
    assert err.strip().splitlines()[-1] == errors[0]
    return errors[0]


def new_thyroid(llm: LoopbackLLM, folder: Path | None, *args: str) -> int:
    """Create the thyroid gland (CT) in ``folder``; one reply answers both requests."""
    llm.script = [definition_reply(THYROID, descriptions=GOOD)]
    return generate(llm, folder, "--organ", "thyroid gland", "--new", "--modality", "ct", *args)


# --- 1. a new target is created, validated and segmented --------------------------------


def test_new_target_is_written_with_provenance(llm, folder, capsys):
    assert new_thyroid(llm, folder, "--window", "350,40") == 0
    path = folder / "thyroid_gland.json"
    assert f"wrote {path}" in capsys.readouterr().err
    data = read_prompt_file(path)
    definition = data["definition"]
    assert definition["regions"] == ["head", "thorax"]  # the model's
    assert definition["window"] == "350,40"  # the command line's, over "mediastinum"
    assert definition["modalities"] == ["ct", "us"] and definition["laterality"] == "none"
    assert definition["synonyms"] == ["thyroid gland", "thyroid", "thyroid lobes"]
    assert "notes" not in definition  # extra keys of the reply are ignored
    assert definition["source"] == "generated" and definition["overrides"] == ["window"]
    assert definition["generator"] == "gpt-4o-mini"
    assert definition["served_model"] == "loopback-llm-1"
    assert definition["endpoint"] == llm.base_url and definition["date"]
    assert definition["template_version"] == DEFINITION_TEMPLATE_VERSION
    assert definition["template_sha256"] == definition_template_sha256()
    assert definition["template_sha256"] != template_sha256()
    assert definition["sampling"] == {"temperature": 0.7, "seed": None}
    entry = data["entries"]["ct"]
    assert entry["descriptions"] == GOOD and entry["template_version"] == TEMPLATE_VERSION
    assert list(data["entries"]) == ["ct"]
    # One definition request, then one description request.
    define, describe = llm.user_messages()
    assert "Define the thyroid gland" in define and "head, thorax, abdomen" in define
    assert '"window"' in define and '"parts"' not in define
    assert "the thyroid gland" in describe and "computed tomography" in describe
    assert KEY.encode() not in path.read_bytes()


def test_new_target_is_segmented_and_competes(llm, folder, tiny_models):
    import salip

    assert new_thyroid(llm, folder, "--window", "350,40") == 0
    heart = get_organ("heart", folder)
    assert "thyroid_gland" in [o.name for o in competitors(heart, "ct", folder)]
    assert "thyroid_gland" not in [o.name for o in competitors(get_organ("heart"), "ct")]
    image = require_data(SLICES / "images" / "amos_0006_90.png")
    result = salip.segment(image, organs="thyroid gland", modality="ct", prompts_dir=str(folder),
                           points_per_side=4, write=False, **tiny_models)  # fmt: skip
    target = result.report["organs"]["thyroid_gland"]["target"]
    assert target["source"] == str(folder / "thyroid_gland.json")
    assert target["provenance"]["source"] == "generated"
    assert target["provenance"]["generator"] == "gpt-4o-mini"
    assert target["provenance"]["overrides"] == ["window"]
    classes = result.report["models"]["scoring"]["classes"]["thyroid_gland"]
    assert classes[0] == "thyroid_gland"
    assert {"heart", "lung_left", "brain", "background"} <= set(classes)  # thorax and head
    assert "spleen" not in classes  # abdomen only: not a neighbour


def test_new_pair_writes_three_targets(llm, folder):
    llm.script = [definition_reply(PSOAS, descriptions=GOOD)]
    rc = generate(llm, folder, "--organ", "psoas muscles", "--new", "--pair", "--modality", "ct")
    assert rc == 0
    pair = read_prompt_file(folder / "psoas_muscles.json")["definition"]
    assert pair["parts"] == ["psoas_muscle_left", "psoas_muscle_right"]
    assert pair["laterality"] == "none" and pair["top_k"] == 2
    assert pair["regions"] == ["abdomen", "pelvis"]
    for side in ("left", "right"):
        member = read_prompt_file(folder / f"psoas_muscle_{side}.json")
        assert member["definition"]["laterality"] == side and member["definition"]["top_k"] == 1
        assert member["definition"]["regions"] == pair["regions"]
        assert member["entries"]["ct"]["descriptions"] == GOOD
    # A definition request asking for parts, then descriptions of the pair and each member.
    define, *describe = llm.user_messages()
    assert '"parts"' in define and "both sides" in define
    assert len(describe) == 3 and "psoas muscle left" in describe[1]
    left = get_organ("left psoas muscle", folder)
    assert left.name == "psoas_muscle_left"
    assert get_organ("psoas muscle (right)", folder).name == "psoas_muscle_right"
    assert pair_of(left, folder).name == "psoas_muscles"  # type: ignore[union-attr]


def test_pair_member_naming_rule():
    assert pair_member_names("psoas_muscles") == ("psoas_muscle_left", "psoas_muscle_right")
    assert pair_member_names("kidney") == ("kidney_left", "kidney_right")
    assert pair_member_names("humerus") == ("humerus_left", "humerus_right")
    assert pair_member_names("psoas") == ("psoas_left", "psoas_right")


def test_descriptions_of_a_user_target_in_another_modality(llm, folder):
    assert new_thyroid(llm, folder) == 0
    llm.script = [descriptions_reply(GOOD)]
    assert generate(llm, folder, "--organ", "thyroid", "--modality", "us") == 0
    data = read_prompt_file(folder / "thyroid_gland.json")
    assert set(data["entries"]) == {"ct", "us"}
    assert data["definition"]["window"] == "mediastinum"  # kept; no override this time
    assert data["definition"]["overrides"] == []


def test_requested_modalities_are_described_and_added(llm, folder):
    """THYROID's modalities are ct and us: asking for mr descriptions adds mr."""
    assert new_thyroid(llm, folder, "--modality", "mr") == 0
    data = read_prompt_file(folder / "thyroid_gland.json")
    assert data["definition"]["modalities"] == ["ct", "us", "mr"]
    assert list(data["entries"]) == ["ct", "mr"]
    assert len(llm.requests) == 3  # the definition, then ct and mr descriptions


# --- 2. a malformed definition is refused; nothing is written ---------------------------


def _without(key: str) -> dict:
    return {k: v for k, v in THYROID.items() if k != key}


@pytest.mark.parametrize(
    ("definition", "pair", "message"),
    [
        ({**THYROID, "regions": ["neck"]}, False, "definition.regions: neck not allowed"),
        ({**THYROID, "window": "soft"}, False, "definition.window 'soft' is not a preset"),
        ({**THYROID, "window": "-350,40"}, False, "positive width"),
        (_without("window"), False, "definition.window is missing"),
        (_without("regions"), False, "definition.regions is missing"),
        ({**THYROID, "laterality": "both"}, False, "definition.laterality 'both' not allowed"),
        ({**THYROID, "modalities": ["ct", "pet"]}, False, "definition.modalities: pet not"),
        ({**THYROID, "synonyms": [1, 2]}, False, "definition.synonyms must be a list"),
        (THYROID, True, "gives no left and right parts (parts: null)"),
        ({**THYROID, "parts": ["thyroid"]}, True, 'no left and right parts (parts: ["thyroid"])'),
        ({**PSOAS, "laterality": "left"}, True, "a both-sides pair has none"),
    ],
    ids=["region", "window-name", "window-width", "no-window", "no-regions", "laterality",
         "modality", "synonyms", "pair-no-parts", "pair-one-part", "pair-one-side"],
)  # fmt: skip
def test_malformed_definition_is_refused_and_set_unchanged(
    llm, folder, capsys, definition, pair, message
):
    before = hashes(folder)
    llm.script = [definition_reply(definition, descriptions=GOOD)]
    flags = ["--pair"] if pair else []
    rc = generate(llm, folder, "--organ", "thyroid gland", "--new", "--modality", "ct", *flags)
    assert rc == 1
    line = error_line(capsys)
    assert line.startswith("salip: error: thyroid_gland: the model's answer") and message in line
    assert "try again or another --model" in line
    assert len(llm.requests) == 1  # no description was asked for
    assert hashes(folder) == before


def test_malformed_reply_names_its_shape(llm, folder, capsys):
    before = hashes(folder)
    llm.script = [Reply(content=json.dumps(["head", "thorax"]))]
    assert generate(llm, folder, "--organ", "thyroid gland", "--new", "--modality", "ct") == 1
    assert 'not a JSON object {"synonyms"' in error_line(capsys)
    assert hashes(folder) == before


def test_a_bad_description_reply_after_a_good_definition_writes_nothing(llm, folder, capsys):
    before = hashes(folder)
    llm.script = [definition_reply(PSOAS), descriptions_reply(GOOD), descriptions_reply(GOOD[:2])]
    rc = generate(llm, folder, "--organ", "psoas muscles", "--new", "--pair", "--modality", "ct")
    assert rc == 1
    assert "psoas_muscle_left: the model gave 2 descriptions, not 4" in error_line(capsys)
    assert hashes(folder) == before


@pytest.mark.parametrize(
    ("flags", "message"),
    [
        (["--regions", "head,neck"], "--regions: neck not allowed; use head, thorax"),
        (["--window", "0,40"], "--window '0,40' is not a preset"),
        (["--window", "soft"], "--window 'soft' is not a preset"),
        (["--top-k", "0"], "--top-k must be a whole number from 1 to 10"),
        (["--modalities", "mr,us"], "--modality ct is not among --modalities mr,us"),
        (["--pair", "--laterality", "left"], "a pair (--pair) has no side of its own"),
        (["--modality", "pet"], "unknown modality 'pet'"),
    ],
)
def test_bad_command_line_values_are_refused_before_any_request(
    llm, folder, capsys, flags, message
):
    before = hashes(folder)
    llm.script = [definition_reply(THYROID, descriptions=GOOD)]
    rc = generate(llm, folder, "--organ", "thyroid gland", "--new", "--modality", "ct", *flags)
    assert rc == 1
    assert message in error_line(capsys)
    assert llm.requests == []
    assert hashes(folder) == before


def test_command_line_values_override_the_model(llm, folder):
    llm.script = [definition_reply({**THYROID, "regions": ["neck"], "window": "soft"})]
    llm.script.append(descriptions_reply(GOOD))
    rc = new_thyroid_with(llm, folder, "--regions", "head,thorax", "--window", "brain",
                          "--modalities", "ct,us", "--laterality", "none",
                          "--synonyms", "thyroid,thyreoidea", "--top-k", "2")  # fmt: skip
    assert rc == 0
    definition = read_prompt_file(folder / "thyroid_gland.json")["definition"]
    assert definition["regions"] == ["head", "thorax"] and definition["window"] == "brain"
    assert definition["synonyms"] == ["thyroid gland", "thyroid", "thyreoidea"]
    assert definition["top_k"] == 2
    assert definition["overrides"] == [
        "synonyms", "modalities", "regions", "laterality", "window", "top_k"
    ]  # fmt: skip


def new_thyroid_with(llm: LoopbackLLM, folder: Path, *args: str) -> int:
    return generate(llm, folder, "--organ", "thyroid gland", "--new", "--modality", "ct", *args)


def test_hand_written_pair_without_sides_is_refused(folder, llm, capsys):
    """A pair file whose parts name one member, or members the set lacks."""
    pair = {
        "format_version": 1,
        "organ": "psoas_muscles",
        "definition": {**PSOAS, "parts": ["psoas_muscle_left"]},
        "entries": {"ct": {"descriptions": GOOD, "source": "hand-written", "date": "2026"}},
    }
    path = folder / "psoas_muscles.json"
    path.write_text(json.dumps(pair))
    with pytest.raises(ConfigError, match=r"psoas_muscles.json.*definition\.parts must name"):
        vocabulary(folder)
    pair["definition"]["parts"] = ["psoas_muscle_left", "psoas_muscle_right"]
    path.write_text(json.dumps(pair))
    with pytest.raises(OrganError, match="must be the left then the right member"):
        vocabulary(folder)
    # The command refuses to add to a broken set, before any request.
    before = hashes(folder)
    assert new_thyroid(llm, folder) == 1
    assert "must be the left then the right member" in error_line(capsys)
    assert llm.requests == [] and hashes(folder) == before


# --- 3. a user target overrides a built-in one ---------------------------------------------


def test_hand_written_user_target_overrides_the_built_in(folder, caplog):
    data = json.loads((packaged_dir() / "liver.json").read_text())
    data["definition"]["window"] = "200,60"
    (folder / "liver.json").write_text(json.dumps(data))
    caplog.set_level(logging.INFO, logger="salip")
    assert get_organ("liver", folder).window == "200,60"
    assert "user target liver" in caplog.text and "overrides the built-in" in caplog.text
    known = vocabulary(folder)
    assert known.overridden == ("liver",)
    assert known.sources["liver"] == str(folder / "liver.json")
    assert get_organ("liver").window == "liver"  # the packaged set is untouched


def test_new_force_overrides_a_built_in_target(llm, folder, capsys):
    llm.script = [definition_reply({**THYROID, "regions": ["abdomen"]}, descriptions=GOOD)]
    before = hashes(folder)
    assert generate(llm, folder, "--organ", "liver", "--new", "--modality", "ct") == 1
    line = error_line(capsys)
    assert "liver (built-in): already a target; pass --force" in line
    assert llm.requests == [] and hashes(folder) == before
    rc = generate(llm, folder, "--organ", "liver", "--new", "--modality", "ct", "--force",
                  "--window", "200,60")  # fmt: skip
    assert rc == 0
    assert "overrides the built-in one" in capsys.readouterr().err
    data = read_prompt_file(folder / "liver.json")
    assert data["definition"]["window"] == "200,60" and data["definition"]["overrides"] == [
        "window"
    ]
    assert data["entries"]["ct"]["source"] == "generated"
    packaged = read_prompt_file(packaged_dir() / "liver.json")["entries"]
    assert data["entries"]["mr"] == packaged["mr"]  # other modalities kept from the package
    assert get_organ("liver", folder).window == "200,60"
    assert vocabulary(folder).overridden == ("liver",)


# --- 4. `salip organs` lists user targets --------------------------------------------------


def test_organs_command_lists_user_targets_with_their_source(llm, folder, capsys):
    assert new_thyroid(llm, folder) == 0
    capsys.readouterr()
    assert main(["organs", "--prompts-dir", str(folder)]) == 0
    lines = capsys.readouterr().out.splitlines()
    (thyroid,) = [line for line in lines if line.startswith("thyroid_gland ")]
    assert f"user target: {folder / 'thyroid_gland.json'}" in thyroid
    assert "head,thorax" in thyroid and "also: thyroid gland" in thyroid
    (pineal,) = [line for line in lines if line.startswith("pineal_gland ")]
    assert f"user target: {folder / 'pineal_gland.json'}" in pineal
    assert len([line for line in lines if "user target" in line]) == 2


# --- 5. free-text names ---------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "name"),
    [
        ("The Liver", "liver"),
        ("liver.", "liver"),
        ("LEFT kidney", "kidney_left"),
        ("kidney (left)", "kidney_left"),
        ("kidney-left", "kidney_left"),
        ("Kidneys", "kidneys"),
        ("right lung", "lung_right"),
    ],
)
def test_free_text_resolves(text, name):
    assert get_organ(text).name == name


def test_free_text_resolves_user_targets(llm, folder):
    assert new_thyroid(llm, folder) == 0
    for text in ("Thyroid Gland", "the thyroid", "thyroid-gland", "thyroid lobes"):
        assert get_organ(text, folder).name == "thyroid_gland", text
    with pytest.raises(OrganError):
        get_organ("thyroid gland")  # only in the user set


def test_unknown_term_names_close_targets_and_the_new_command():
    with pytest.raises(OrganError) as info:
        get_organ("kidny")
    message = str(info.value)
    assert "Did you mean: kidneys" in message or "Did you mean: kidney" in message
    assert '`salip prompts generate --organ "kidny" --new`' in message
    assert "\n" not in message


# --- 6. the built-in vocabulary is data ----------------------------------------------------


def test_builtin_vocabulary_equals_the_recorded_targets():
    expected = json.loads((REPO / "tests" / "data" / "builtin_targets.json").read_text())
    known = vocabulary(None)
    actual = json.loads(json.dumps([dataclasses.asdict(o) for o in known.organs.values()]))
    assert len(actual) == 33
    assert actual == expected
    assert set(known.sources.values()) == {"built-in"} and known.overridden == ()


# --- 7. --new and unknown names -------------------------------------------------------------


def test_unknown_name_without_new_is_refused_with_the_new_hint(llm, folder, capsys):
    llm.script = [descriptions_reply(GOOD)]
    assert generate(llm, folder, "--organ", "thyroid gland", "--modality", "ct") == 1
    line = error_line(capsys)
    assert "unknown organ 'thyroid gland'" in line
    assert '`salip prompts generate --organ "thyroid gland" --new`' in line
    assert llm.requests == []


def test_new_on_an_existing_name_is_refused(llm, folder, capsys):
    assert new_thyroid(llm, folder) == 0
    capsys.readouterr()
    before, requests = hashes(folder), len(llm.requests)
    assert new_thyroid(llm, folder) == 1
    line = error_line(capsys)
    assert f"thyroid_gland (user target, {folder / 'thyroid_gland.json'})" in line
    assert "pass --force to redefine it" in line
    assert generate(llm, folder, "--organ", "hepar", "--new", "--modality", "ct") == 1
    assert "'hepar' already names the target liver (built-in)" in error_line(capsys)
    assert len(llm.requests) == requests and hashes(folder) == before
    # --force redefines the user target.
    assert new_thyroid(llm, folder, "--force", "--regions", "head") == 0
    assert get_organ("thyroid gland", folder).regions == ("head",)


def test_new_refuses_the_packaged_set(llm, tmp_path, capsys, monkeypatch):
    llm.script = [definition_reply(THYROID, descriptions=GOOD)]
    assert new_thyroid(llm, None) == 1
    line = error_line(capsys)
    assert "pass --prompts-dir DIR or set SALIP_PROMPTS_DIR" in line
    assert llm.requests == []
    # $SALIP_PROMPTS_DIR names a user set (created if missing).
    monkeypatch.setenv("SALIP_PROMPTS_DIR", str(tmp_path / "env_set"))
    assert new_thyroid(llm, None) == 0
    assert (tmp_path / "env_set" / "thyroid_gland.json").is_file()


def test_definition_flags_need_new(llm, folder, capsys):
    assert generate(llm, folder, "--organ", "liver", "--modality", "ct", "--regions", "head") == 1
    assert "--regions defines a new target: add --new" in error_line(capsys)
    assert llm.requests == []


# --- names in any script, reserved words, synonyms of other targets --------------------------


@pytest.mark.parametrize(
    ("words", "name"),
    [
        ("Schilddrüse", "schilddrüse"),
        ("甲状腺", "甲状腺"),
        ("名前 (left)", "名前_left"),
        ("Thyroid  Gland", "thyroid_gland"),
    ],  # fmt: skip
)
def test_target_names_keep_every_script_alike(llm, folder, words, name):
    llm.script = [definition_reply(THYROID, descriptions=GOOD)]
    assert generate(llm, folder, "--organ", words, "--new", "--modality", "ct") == 0
    assert (folder / f"{name}.json").is_file()
    assert vocabulary(folder).resolve(words) == name  # the words find what they created
    assert get_organ(name, folder).name == name


@pytest.mark.parametrize(
    ("words", "message"),
    [
        ("background", "'background' is reserved"),
        ("x" * 300, "use at most 64"),
        ("2nd rib", "start with a letter"),
        ("(left)", "names only a side"),
    ],  # fmt: skip
)
def test_unusable_target_names_are_one_line_before_any_request(llm, folder, capsys, words,
                                                               message):  # fmt: skip
    before = hashes(folder)
    assert generate(llm, folder, "--organ", words, "--new", "--modality", "ct") == 1
    assert message in error_line(capsys)
    assert llm.requests == [] and hashes(folder) == before


def test_synonyms_that_name_other_targets_are_dropped_or_refused(llm, folder, capsys):
    answer = {**THYROID, "synonyms": ["thyroid", "liver", "Leber"]}
    llm.script = [definition_reply(answer, descriptions=GOOD)]
    assert generate(llm, folder, "--organ", "thyroid gland", "--new", "--modality", "ct") == 0
    definition = read_prompt_file(folder / "thyroid_gland.json")["definition"]
    assert "liver" not in definition["synonyms"] and "thyroid" in definition["synonyms"]
    assert "dropped the model's synonym(s) 'liver' (liver)" in capsys.readouterr().err
    assert vocabulary(folder).resolve("liver") == "liver"
    before = hashes(folder)
    assert generate(llm, folder, "--organ", "parotid gland", "--new", "--modality", "ct",
                    "--synonyms", "parotid,spleen") == 1  # fmt: skip
    assert "--synonyms spleen: already names spleen" in error_line(capsys)
    assert hashes(folder) == before


def test_prompts_show_reads_the_prompts_dir(folder, capsys):
    assert main(["prompts", "show", "pineal body", "--prompts-dir", str(folder)]) == 0
    out = capsys.readouterr().out
    assert out.startswith(f"pineal_gland  ({folder / 'pineal_gland.json'})")
    assert "behind the third ventricle" in out
    assert main(["prompts", "show", "pineal_gland"]) == 1  # not a built-in target
    assert "unknown organ 'pineal_gland'" in capsys.readouterr().err
