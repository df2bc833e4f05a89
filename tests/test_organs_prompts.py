"""Organ vocabulary and the packaged description prompts."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest

from salip.errors import ConfigError, OrganError
from salip.organs import ORGANS, get_organ, parse_organs
from salip.prompts import load_prompt_file, load_prompts, prompts_dir

REQUIRED = [
    "liver", "spleen", "kidney_left", "kidney_right", "pancreas", "stomach", "gallbladder",
    "aorta", "lungs", "lung_left", "lung_right", "heart", "urinary_bladder", "brain",
    "fetal_head",
]  # fmt: skip


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


def test_every_registered_organ_has_prompts():
    for name in ORGANS:
        assert (prompts_dir() / f"{name}.json").is_file(), name


def test_missing_modality_falls_back_with_record(caplog):
    prompts = load_prompts(get_organ("liver"), "us")
    assert prompts.modality == "ct" and prompts.requested_modality == "us"
    assert "no us descriptions for liver" in caplog.text


def test_prompts_dir_override_and_errors(tmp_path, monkeypatch):
    monkeypatch.setenv("SALIP_PROMPTS_DIR", str(tmp_path))
    with pytest.raises(ConfigError, match="no description prompts for 'liver'"):
        load_prompts(get_organ("liver"), "ct")
    (tmp_path / "liver.json").write_text("{not json")
    with pytest.raises(ConfigError, match="unreadable prompt file"):
        load_prompts(get_organ("liver"), "ct")


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
