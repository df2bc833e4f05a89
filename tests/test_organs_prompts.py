"""Organ vocabulary and the packaged description prompts."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from importlib import resources
from pathlib import Path

import pytest

from salip.core.errors import ConfigError, OrganError
from salip.core.organs import (
    ORGANS,
    competitors,
    family,
    get_organ,
    load_competitors,
    pair_of,
    parse_organs,
)
from salip.core.prompts import (
    BACKGROUND,
    load_prompt_file,
    load_prompts,
    prompts_dir,
    validate_prompt_data,
)

#: The CLIP-Driven Universal Model's 25 organs, in its own words, plus the issue's extras.
UNIVERSAL_25 = [
    "spleen", "right kidney", "left kidney", "gall bladder", "esophagus", "liver", "stomach",
    "aorta", "postcava", "portal vein and splenic vein", "pancreas", "right adrenal gland",
    "left adrenal gland", "duodenum", "hepatic vessel", "right lung", "left lung", "colon",
    "intestine", "rectum", "bladder", "prostate", "left head of femur", "right head of femur",
    "celiac truck",
]  # fmt: skip
EXTRAS = ["brain", "lungs", "heart", "fetal head", "skull"]
REQUIRED = sorted(ORGANS)


def test_vocabulary_covers_the_universal_model_and_extras():
    names = {get_organ(n).name for n in UNIVERSAL_25 + EXTRAS}
    assert len(names) == 30  # no two of those names collapse onto one target
    assert get_organ("postcava").name == "inferior_vena_cava"
    assert get_organ("intestine").name == "small_bowel"


def test_pairs_and_laterality_are_consistent():
    pairs = [o for o in ORGANS.values() if o.parts]
    assert {o.name for o in pairs} == {"kidneys", "lungs", "adrenal_glands", "femoral_heads"}
    for pair in pairs:
        left, right = (get_organ(p) for p in pair.parts)
        assert (left.laterality, right.laterality) == ("left", "right")
        assert pair.laterality == "none" and pair.top_k == 2
        assert pair_of(left) is pair and pair_of(right) is pair
        assert family(left) == {pair.name, left.name, right.name}
    assert pair_of(get_organ("liver")) is None
    for organ in ORGANS.values():
        assert organ.laterality in ("none", "left", "right")
        assert (organ.laterality != "none") == (pair_of(organ) is not None), organ.name


def test_competitors_are_plausible_neighbours():
    liver = [o.name for o in competitors(get_organ("liver"), "ct")]
    assert {"spleen", "stomach", "kidney_left", "kidney_right", "heart"} <= set(liver)
    assert "liver" not in liver and "brain" not in liver and "prostate" not in liver
    kidney = [o.name for o in competitors(get_organ("kidney_left"), "ct")]
    assert not {"kidney_left", "kidney_right", "kidneys"} & set(kidney)
    lungs_xray = [o.name for o in competitors(get_organ("lungs"), "xray")]
    assert lungs_xray == ["heart"]  # the reference method's classic confusion
    sets = load_competitors(get_organ("lungs"), "xray", [get_organ("lungs")])
    assert [p.organ for p in sets] == ["heart", BACKGROUND]
    assert all(p.modality == "xray" for p in sets)


def test_synonyms_and_parsing():
    assert get_organ("Postcava").name == "inferior_vena_cava"
    assert get_organ("left kidney").name == "kidney_left"
    assert get_organ("Urinary-Bladder").name == "urinary_bladder"
    assert [o.name for o in parse_organs(["liver,spleen", "liver"])] == ["liver", "spleen"]
    assert get_organ("lungs").top_k == 2 and get_organ("liver").top_k == 1
    with pytest.raises(OrganError, match="no organ given"):
        parse_organs([" , "])


@pytest.mark.parametrize("name", REQUIRED)
def test_hand_written_prompts_for_required_organs(name):
    organ = get_organ(name)
    data = load_prompt_file(name)
    assert data["organ"] == name
    for modality in organ.modalities:
        prompts = load_prompts(organ, modality)
        assert prompts.modality == modality, f"{name} lacks {modality} descriptions"
        assert len(prompts.descriptions) >= 5
        assert len(set(prompts.descriptions)) == len(prompts.descriptions)
        assert prompts.provenance["source"] == "hand-written"
        assert prompts.provenance["date"]


def test_every_shipped_prompt_file_validates():
    import json

    files = sorted(prompts_dir().glob("*.json"))
    assert {p.stem for p in files} == set(ORGANS) | {BACKGROUND}
    for path in files:
        data = json.loads(path.read_text(encoding="utf-8"))
        assert validate_prompt_data(data, path.stem) == [], path.name
    background = load_prompt_file(BACKGROUND)["entries"]
    assert set(background) == {"ct", "mr", "xray", "us"}


def test_every_target_has_ct_prompts():
    for name in ORGANS:
        assert load_prompts(get_organ(name), "ct").modality == "ct", name


def test_validation_reports_each_problem():
    good = load_prompt_file("liver")
    assert validate_prompt_data(good, "liver") == []
    bad = {
        "format_version": 2,
        "organ": "liver",
        "entries": {
            "pet": {"descriptions": ["a", "a", ""], "source": "guessed", "date": ""},
            "ct": {"descriptions": ["x"], "source": "generated", "date": "2026-01-01"},
        },
    }
    problems = " | ".join(validate_prompt_data(bad, "spleen"))
    for expected in [
        "format_version is 2", "file is named spleen.json", "entry 'pet': modality must be",
        "description 2 repeats", "description 3 is empty", "source must be one of",
        "date is missing", "entry 'ct': a generated entry needs generator",
    ]:  # fmt: skip
        assert expected in problems


def test_missing_modality_falls_back_with_record(caplog):
    prompts = load_prompts(get_organ("liver"), "xray")
    assert prompts.modality == "ct" and prompts.requested_modality == "xray"
    assert "no xray descriptions for liver" in caplog.text


def test_prompts_dir_override_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIP_PROMPTS_DIR", str(tmp_path))
    # A user set lies over the packaged one: what it lacks comes from the package.
    assert load_prompts(get_organ("liver"), "ct").descriptions
    with pytest.raises(ConfigError, match="no description prompts for 'thyroid'"):
        load_prompts("thyroid", "ct")
    (tmp_path / "liver.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable prompt file"):
        load_prompts(get_organ("liver"), "ct")
    (tmp_path / "liver.json").write_text('{"format_version": 1, "organ": "liver"}')
    with pytest.raises(ConfigError, match="entries must be a non-empty object"):
        load_prompts(get_organ("liver"), "ct")
    # An explicit folder wins over the environment.
    packaged = Path(str(resources.files("salip.prompts_data")))
    assert prompts_dir(packaged) == packaged
    assert load_prompts(get_organ("liver", packaged), "ct", packaged).descriptions


def test_prompts_ship_in_the_wheel(tmp_path):
    """prompts/ must be found from an installed wheel, not only from the repository."""
    from tests.conftest import REPO

    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
         "-w", str(tmp_path), str(REPO)],
        check=True,
        capture_output=True,
    )  # fmt: skip
    (wheel,) = tmp_path.glob("salip-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    for organ in REQUIRED:
        assert f"salip/prompts_data/{organ}.json" in names


def test_no_module_reads_the_vocabulary_at_import():
    """Targets are read from the prompt files on first use, never when salip is imported
    (an import must not depend on, or fail over, the prompt set)."""
    code = (
        "import importlib, pkgutil, salip\n"
        "import salip.core.organs as organs\n"
        "for m in pkgutil.walk_packages(salip.__path__, 'salip.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(organs._assemble.cache_info().misses)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "0"
