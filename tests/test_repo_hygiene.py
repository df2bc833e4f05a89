"""Small promises about the command line's help and the repository's ignore rules."""

from __future__ import annotations

import re
import shutil
import subprocess

import pytest

from salip.apps.cli import _build_parser
from tests.conftest import REPO


def _segment_help_entries() -> dict[str, str]:
    parser = _build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]  # noqa: SLF001
    return {
        action.option_strings[-1]: action.help or ""
        for action in segment._actions  # noqa: SLF001
        if action.option_strings
    }


def test_every_flag_states_its_default_at_most_once():
    """e.g. --min-score once read "(default: no threshold). (default: None)"."""
    for flag, text in _segment_help_entries().items():
        assert len(re.findall(r"default:", text, flags=re.IGNORECASE)) <= 1, (flag, text)
    assert _segment_help_entries()["--min-score"].count("no threshold") == 1


def _readme_outputs() -> list[str]:
    """The output paths of the README's `salip segment` and `salip proposals` examples."""
    text = (REPO / "README.md").read_text()
    blocks = re.findall(r"```sh\n(.*?)```", text, flags=re.DOTALL)
    commands = " ".join(b.replace("\\\n", " ") for b in blocks)
    found = re.findall(r"(?:-o|--preview|--report)\s+(\S+)", commands)
    return [f for f in found if not f.startswith(("$", "DIR", "PNG", "JSON"))]


def test_readme_example_outputs_and_benchmark_results_are_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the repository's git metadata is needed to check its ignore rules")
    outputs = _readme_outputs()
    assert {"liver.nii.gz", "report.json", "liver.png"} <= set(outputs), outputs
    paths = [*outputs, "benchmark-results/x/summary.md", "benchmarks/benchmark-results/a.csv"]
    for path in paths:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert ignored.returncode == 0, f"{path} would be left unignored in the repository"
