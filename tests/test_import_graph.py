"""Layout rules: no import cycle among salip modules (imports inside functions count too),
and no function over 100 lines or module over 600."""

from __future__ import annotations

import ast
from pathlib import Path

from tests.conftest import REPO


def _modules() -> dict[str, Path]:
    modules = {}
    for path in sorted((REPO / "salip").rglob("*.py")):
        parts = list(path.relative_to(REPO).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def _imported(module: str, path: Path, known: dict[str, Path]) -> set[str]:
    """The salip modules ``module`` imports anywhere in its file (functions included)."""
    found: set[str] = set()
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, *([node.module] if node.module else [])])
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name for name in found if name in known and name != module}


def import_graph() -> dict[str, set[str]]:
    """Module name -> the salip modules it imports."""
    known = _modules()
    return {name: _imported(name, path, known) for name, path in known.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle as a list of modules (first repeated last), or None."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_no_import_cycle_among_salip_modules():
    cycle = find_cycle(import_graph())
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_the_cycle_finder_finds_cycles():
    """The check above can fail: a graph with a cycle through a function-level import."""
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": set()}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    graph = import_graph()
    # Function-level imports are seen: the factory imports the head's segmenter inside a
    # function.
    assert "salip.strategies.head" in graph["salip.api.factory"]
    graph["salip.strategies.head"] = graph["salip.strategies.head"] | {"salip.api.factory"}
    assert find_cycle(graph) is not None


def test_local_dir_parsing_matches_open_clip():
    from open_clip.factory import parse_model_name

    from salip.models.specs import local_dir

    for spec in ("local-dir:/models/clip", "local-dir:rel/dir", "ViT-L-14", "hf-hub:org/repo"):
        schema, identifier = parse_model_name(spec)
        folder = local_dir(spec)
        assert (folder is not None) == (schema == "local-dir"), spec
        if folder is not None:
            assert folder == Path(identifier)


def long_functions(limit: int = 100) -> list[str]:
    """``path:line name (N lines)`` for every function in salip/ longer than ``limit``."""
    found = []
    for path in sorted((REPO / "salip").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                length = node.end_lineno - node.lineno + 1
                if length > limit:
                    found.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({length})")
    return found


def test_no_function_over_100_lines():
    assert long_functions() == []
    assert long_functions(limit=60)  # the check reads real functions (some exceed 60)


def long_modules(limit: int = 600) -> list[str]:
    """``path (N lines)`` for every module in salip/ longer than ``limit`` lines."""
    found = []
    for path in sorted((REPO / "salip").rglob("*.py")):
        length = len(path.read_text(encoding="utf-8").splitlines())
        if length > limit:
            found.append(f"{path.relative_to(REPO)} ({length})")
    return found


def test_no_module_over_600_lines():
    assert long_modules() == []
    assert long_modules(limit=400)  # the check counts real lines (some modules exceed 400)


#: Layers, bottom to top; a module may import only from its own layer or those below.
LAYERS = ("core", "io", "models", "engines", "strategies", "outputs", "api", "apps")


def layer_of(module: str) -> int:
    """The layer index of a salip module (``salip`` itself re-exports the API)."""
    if module in ("salip.version",):
        return 0
    if module == "salip":
        return LAYERS.index("api")
    return LAYERS.index(module.split(".")[1])


def upward_imports(graph: dict[str, set[str]]) -> list[str]:
    """'a -> b' for every import of a module from a higher layer."""
    return sorted(
        f"{a} -> {b}" for a, deps in graph.items() for b in deps if layer_of(b) > layer_of(a)
    )


def test_every_module_lies_in_a_layer():
    for module in import_graph():
        assert module in ("salip", "salip.version") or module.split(".")[1] in LAYERS, module


def test_no_module_imports_from_a_higher_layer():
    assert upward_imports(import_graph()) == []


def test_the_layer_check_finds_upward_imports():
    graph = {"salip.core.config": {"salip.api.pipeline"}, "salip.api.pipeline": set()}
    assert upward_imports(graph) == ["salip.core.config -> salip.api.pipeline"]


#: Evaluation modules (the benchmark, the dataset readers, and the training that reads
#: them): the segmenting path must never import them. (The CLI's parser reads the light
#: ``salip.apps.training.config`` for the ``head train`` flags.)
EVALUATION = (
    "salip.apps.bench",
    "salip.apps.training.data",
    "salip.apps.training.train",
)


def test_the_segmenting_path_imports_no_evaluation_module(tmp_path, tiny_models):
    """``salip segment`` on a NIfTI, in a fresh process, with both strategies."""
    import json
    import os
    import subprocess
    import sys

    import nibabel as nib
    import numpy as np

    data = np.full((24, 20, 6), -1000, dtype=np.int16)
    data[6:16, 5:15, 1:5] = 60
    scan = tmp_path / "scan.nii.gz"
    nib.save(nib.Nifti1Image(data, np.diag([1.5, 1.5, 3.0, 1.0])), scan)
    script = (
        "import json, sys\n"
        "from salip.apps.cli import main\n"
        "code = main(sys.argv[1:])\n"
        "print(json.dumps([code, sorted(m for m in sys.modules if m.startswith('salip'))]))\n"
    )
    for strategy in ("volume", "slices"):
        out = tmp_path / f"{strategy}.nii.gz"
        args = [
            "segment", str(scan), "--organ", "liver", "-o", str(out), "--strategy", strategy,
            "--sam-checkpoint", tiny_models["sam_checkpoint"],
            "--clip-model", tiny_models["clip_model"], "--device", "cpu",
            "--points-per-side", "4", "--no-progress",
        ]  # fmt: skip
        run = subprocess.run(
            [sys.executable, "-c", script, *args],
            capture_output=True, text=True, check=True, cwd=REPO, env=dict(os.environ),
        )  # fmt: skip
        code, modules = json.loads(run.stdout.strip().splitlines()[-1])
        assert code == 0 and out.exists(), run.stderr[-2000:]
        assert "salip.api.pipeline" in modules  # the check sees what ran
        assert [m for m in modules if m.startswith(EVALUATION)] == [], strategy
