"""Small promises about the command line's help and the repository's ignore rules."""

from __future__ import annotations

import ast
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from salip.apps.cli.app import build_parser
from tests.conftest import REPO


def _segment_help_entries() -> dict[str, str]:
    parser = build_parser()
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
    # Absolute paths (a cluster's shared folder) are outside the repository.
    return [f for f in found if not f.startswith(("$", "DIR", "PNG", "JSON", "/"))]


def test_readme_example_outputs_and_benchmark_results_are_ignored():
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.fail("the repository's git metadata is needed to check its ignore rules")
    outputs = _readme_outputs()
    assert {"liver.nii.gz", "report.json", "liver_slice.png"} <= set(outputs), outputs
    paths = [*outputs, "benchmark-results/x/summary.md", "benchmarks/benchmark-results/a.csv"]
    for path in paths:
        ignored = subprocess.run(["git", "check-ignore", "-q", path], cwd=REPO)
        assert ignored.returncode == 0, f"{path} would be left unignored in the repository"


def test_readme_examples_run_in_one_folder_do_not_collide():
    """Each example's mask has its own sidecar (liver.nii.gz and liver.png once shared
    liver.json), and no output is written by two examples."""
    from salip.io.writing import sidecar_path

    files = [o for o in _readme_outputs() if not o.endswith("/")]  # folders hold cohorts
    masks = [o for o in files if o.endswith((".nii.gz", ".nii", ".png")) and o != "organs.png"]
    written = [*files, *(str(sidecar_path(Path(m))) for m in masks)]  # organs.png: a preview
    assert len(written) == len(set(written)), sorted(written)


def test_readme_flags_table_lists_every_segment_flag():
    """The README's Flags section names every flag of `salip segment`, and only those."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("### Flags", 1)[1].split("\n### ", 1)[0]
    listed = set(re.findall(r"(?<![\w-])(--[a-z][a-z0-9-]*)", section))
    flags = {f for f in _segment_flags() if f.startswith("--")}
    assert flags - listed == set(), "flags missing from the README"
    assert listed - flags == set(), "README flags that salip segment does not have"


def _segment_flags() -> set[str]:
    parser = build_parser()
    segment = parser._subparsers._group_actions[0].choices["segment"]  # noqa: SLF001
    return {o for action in segment._actions for o in action.option_strings}  # noqa: SLF001


def _readme_tree() -> set[str]:
    """Paths under salip/ listed in the README's Architecture tree (folders end with /)."""
    text = (REPO / "README.md").read_text(encoding="utf-8")
    section = text.split("## Architecture", 1)[1]
    block = section.split("```text\n", 1)[1].split("```", 1)[0]
    lines = block.splitlines()
    assert lines[0] == "salip/"
    listed, stack = set(), []
    for line in lines[1:]:
        depth = (len(line) - len(line.lstrip(" "))) // 2
        name = line.split()[0]
        stack[depth - 1 :] = [name]
        listed.add("".join(stack))
    return listed


def test_readme_architecture_tree_matches_the_package():
    actual = set()
    for path in (REPO / "salip").rglob("*.py"):
        relative = path.relative_to(REPO / "salip")
        if path.name != "__init__.py":
            actual.add(relative.as_posix())
        for parent in list(relative.parents)[:-1]:
            actual.add(parent.as_posix() + "/")
    assert _readme_tree() == actual


def test_every_package_folder_is_installed():
    from salip.core.errors import ConfigError
    from salip.core.toml_files import read_toml

    project = read_toml(REPO / "pyproject.toml", "pyproject", ConfigError)
    listed = set(project["tool"]["setuptools"]["packages"])
    folders = {
        ".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "salip").rglob("__init__.py")
    }
    assert folders <= listed


def _public_names(tree: ast.Module) -> tuple[list[str], list[str] | None]:
    """(public top-level names a module defines, its ``__all__`` or None)."""
    defined, declared = [], None
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.ClassDef):
            defined.append(node.name)
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            for target in targets:
                if isinstance(target, ast.Name):
                    if target.id == "__all__":
                        declared = list(ast.literal_eval(node.value))
                    elif not isinstance(node.value, ast.Call) or "TypeVar" not in ast.unparse(
                        node.value.func
                    ):
                        defined.append(target.id)
    public = [n for n in defined if not n.startswith("_") and n != "logger"]
    return public, declared


def test_every_module_with_public_names_declares_them():
    """``__all__`` names each module's public surface, and only names the module has."""
    for path in sorted((REPO / "salip").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"))
        public, declared = _public_names(tree)
        where = path.relative_to(REPO).as_posix()
        if path.name == "__init__.py" or not public:
            continue
        assert declared is not None, f"{where} defines {public[:3]}... but has no __all__"
        bound = set(public) | {
            alias.asname or alias.name
            for node in tree.body
            if isinstance(node, ast.Import | ast.ImportFrom)
            for alias in node.names
        }
        assert set(declared) <= bound, (where, sorted(set(declared) - bound))
