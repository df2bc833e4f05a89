"""The output transaction: all files of a run, or none, and older files kept on failure."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from salip.core.errors import OutputError
from salip.io.output_set import OutputSet
from tests.conftest import REPO, TOTALSEG, require_data


def _write(text: str):
    return lambda tmp: tmp.write_text(text)


def _listing(folder: Path) -> list[str]:
    return sorted(str(p.relative_to(folder)) for p in folder.rglob("*"))


def test_commit_writes_all_files_with_the_umask_mode(tmp_path):
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"input")
    old = os.umask(0o027)
    try:
        with OutputSet(source, overwrite=False) as outputs:
            for name in ("a.json", "sub/dir/b.json"):
                outputs.add(tmp_path / name, "-o")
            outputs.check_writable()
            outputs.stage(tmp_path / "a.json", _write("A"))
            outputs.stage(tmp_path / "sub/dir/b.json", _write("B"))
            written = outputs.commit()
    finally:
        os.umask(old)
    assert written == [tmp_path / "a.json", tmp_path / "sub/dir/b.json"]
    assert (tmp_path / "a.json").read_text() == "A"
    assert (tmp_path / "a.json").stat().st_mode & 0o777 == 0o640
    assert _listing(tmp_path) == ["a.json", "scan.nii.gz", "sub", "sub/dir", "sub/dir/b.json"]


def test_failure_before_commit_leaves_nothing_not_even_new_folders(tmp_path):
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"input")
    (tmp_path / "old.json").write_text("old")
    with pytest.raises(RuntimeError), OutputSet(source, overwrite=True) as outputs:
        outputs.add(tmp_path / "old.json", "--report")
        outputs.add(tmp_path / "new/deeper/m.json", "-o")
        outputs.stage(tmp_path / "new/deeper/m.json", _write("M"))
        outputs.stage(tmp_path / "old.json", _write("replacement"))
        raise RuntimeError("the run failed after writing")
    assert _listing(tmp_path) == ["old.json", "scan.nii.gz"]
    assert (tmp_path / "old.json").read_text() == "old"


def test_a_failed_rename_restores_every_file(tmp_path, monkeypatch):
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"input")
    (tmp_path / "a.json").write_text("old a")
    outputs = OutputSet(source, overwrite=True)
    failed = pytest.raises(OutputError, match=r"cannot write .*c\.json: disk gone; nothing of")
    with failed, outputs:
        for name in ("a.json", "b.json", "c.json"):
            outputs.add(tmp_path / name, "-o")
            outputs.stage(tmp_path / name, _write(f"new {name}"))
        real_replace = os.replace
        calls = []

        def flaky_replace(src, dst):
            calls.append(dst)
            if Path(dst) == tmp_path / "c.json":
                raise OSError("disk gone")
            return real_replace(src, dst)

        monkeypatch.setattr(os, "replace", flaky_replace)
        outputs.commit()
    monkeypatch.undo()
    assert _listing(tmp_path) == ["a.json", "scan.nii.gz"]
    assert (tmp_path / "a.json").read_text() == "old a"


@pytest.mark.parametrize("overwrite, move", [(False, "link"), (True, "replace")])
def test_sigint_during_commit_takes_effect_after_the_whole_set(tmp_path, monkeypatch,
                                                               overwrite, move):  # fmt: skip
    """Without --overwrite files are hard-linked into place (never replacing one), with it
    renamed; either way an interrupt waits for the whole set."""
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"input")
    real_move = getattr(os, move)
    sent = []

    def move_then_interrupt(src, dst):
        real_move(src, dst)
        if not sent:  # a real SIGINT, after the first of three moves
            sent.append(dst)
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(KeyboardInterrupt), OutputSet(source, overwrite=overwrite) as outputs:
        for name in ("a.json", "b.json", "c.json"):
            outputs.add(tmp_path / name, "-o")
            outputs.stage(tmp_path / name, _write(name))
        monkeypatch.setattr(os, move, move_then_interrupt)
        outputs.commit()
    monkeypatch.undo()
    assert sent
    assert _listing(tmp_path) == ["a.json", "b.json", "c.json", "scan.nii.gz"]


def test_unplanned_output_and_unwritable_parent(tmp_path):
    source = tmp_path / "scan.nii.gz"
    source.write_bytes(b"input")
    (tmp_path / "file").write_text("x")
    with OutputSet(source, overwrite=False) as outputs:
        with pytest.raises(OutputError, match="not planned"):
            outputs.stage(tmp_path / "other.json", _write("x"))
        outputs.add(tmp_path / "file" / "m.json", "-o")
        with pytest.raises(OutputError, match="is a file, not a folder"):
            outputs.check_writable()


def test_sigint_in_a_real_process_while_writing_leaves_no_output(tmp_path, tiny_models):
    """A separate `salip segment` process gets SIGINT after its mask was staged."""
    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    out = tmp_path / "out"
    out.mkdir()
    (out / "m.nii.gz").write_bytes(b"an older mask, kept")
    script = textwrap.dedent(
        """
        import os, signal, sys
        from salip.io import output_set
        original = output_set.OutputSet.stage
        def stage(self, path, write):
            original(self, path, write)
            if str(path).endswith(".json"):
                os.kill(os.getpid(), signal.SIGINT)
        output_set.OutputSet.stage = stage
        from salip.apps.cli import main
        sys.exit(main(sys.argv[1:]))
        """
    )
    args = [
        "segment", str(ct), "--organ", "liver", "-q", "--no-progress", "--overwrite",
        "-o", str(out / "m.nii.gz"), "--report", str(out / "r.json"),
        "--preview", str(out / "p.png"),
        "--sam-checkpoint", tiny_models["sam_checkpoint"], "--clip-model",
        tiny_models["clip_model"], "--device", "cpu", "--points-per-side", "4",
        "--pred-iou-thresh", "0", "--stability-score-thresh", "0",
    ]  # fmt: skip
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    done = subprocess.run(
        [sys.executable, "-c", script, *args], capture_output=True, text=True, env=env, timeout=300
    )
    assert done.returncode == 130, done.stderr
    assert done.stderr.strip() == "salip: interrupted"
    assert _listing(out) == ["m.nii.gz"]
    assert (out / "m.nii.gz").read_bytes() == b"an older mask, kept"
