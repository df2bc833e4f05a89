"""The learned head end to end: `salip head train`, `salip segment --method head`, and the
benchmark rows `head`, `head-static` and `head-randtext` (tiny models, shared CT)."""

from __future__ import annotations

import json
from pathlib import Path

import nibabel as nib
import numpy as np
import pandas as pd
import pytest
import torch

import salip
from salip.apps.bench.runner import load_config, run_benchmark
from salip.apps.cli import main
from salip.apps.training.train import train_head
from salip.core.errors import BenchmarkError, ConfigError
from tests.apps.training.test_train import CT_ORGANS, _ct_dataset, _toml_table, write_config
from tests.conftest import TOTALSEG, require_data

VARIANT_KIND = {"clip": "head", "static": "head-static", "randtext": "head-randtext"}


@pytest.fixture(scope="module")
def heads(tmp_path_factory, tiny_models) -> dict[str, Path]:
    """One tiny head per variant, trained through the CLI (a few steps each)."""
    folder = tmp_path_factory.mktemp("heads")
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    paths = {}
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("SALIP_HOME", str(folder / "salip_home"))
        for variant in VARIANT_KIND:
            config = write_config(
                folder / variant,
                tiny_models,
                [_ct_dataset()],
                variant=variant,
                epochs=1,
                steps_per_epoch=2,
                batch_size=2,
                warmup_steps=1,
            )
            out = folder / variant / "out"
            assert main(["head", "train", "--config", str(config), "--out", str(out), "-q"]) == 0
            paths[variant] = out / "head.pt"
        # the static head again with another seed: same kind, different weights
        config = write_config(
            folder / "retrained", tiny_models, [_ct_dataset()], variant="static", epochs=1,
            steps_per_epoch=2, batch_size=2, warmup_steps=1, seed=1,
        )  # fmt: skip
        train_head(config, folder / "retrained" / "out", progress=False)
        (folder / "retrained" / "out" / "head.pt").rename(folder / "retrained.pt")
    torch.set_num_threads(threads)
    return paths


def test_head_train_prints_the_head_and_resumes_to_nothing(heads, tiny_models, capsys, tmp_path):
    config = heads["clip"].parent.parent / "head.toml"
    capsys.readouterr()
    assert main(["head", "train", "--config", str(config), "--out", str(heads["clip"].parent)]) == 0
    captured = capsys.readouterr()
    assert captured.out.strip() == str(heads["clip"])
    assert "0 epoch(s) trained now (1 before), 0 steps" in captured.err
    manifest = json.loads((heads["clip"].parent / "manifest.json").read_text())
    assert manifest["classes"] == CT_ORGANS and manifest["variant"] == "clip"


def test_segment_method_head_writes_the_library_result(heads, tiny_models, tmp_path):
    """`salip segment --method head` gives the masks of segment() with the head segmenter,
    in the input's grid, windowed as in training (the head's classes, not the asked organ)."""
    from salip.models.head import load_head
    from salip.models.sam import load_sam
    from salip.strategies.head import HeadSegmenter

    ct = require_data(TOTALSEG / "example_ct_sm.nii.gz")
    out, report = tmp_path / "liver.nii.gz", tmp_path / "report.json"
    flags = ["--sam-checkpoint", tiny_models["sam_checkpoint"], "--device", "cpu"]
    argv = [
        "segment",
        str(ct),
        "--organ",
        "liver",
        "--method",
        "head",
        "--head",
        str(heads["clip"]),
    ]
    assert main([*argv, *flags, "-o", str(out), "--report", str(report), "-q"]) == 0
    written, original = nib.load(str(out)), nib.load(str(ct))
    assert written.shape == original.shape
    np.testing.assert_allclose(written.affine, original.affine)

    sam = load_sam(tiny_models["sam_checkpoint"])
    segmenter = HeadSegmenter(load_head(heads["clip"], sam), sam)
    direct = salip.segment(ct, organs="liver", write=False, segmenter=segmenter, device="cpu")
    np.testing.assert_array_equal(np.asarray(written.dataobj), direct.labels)
    run = json.loads(report.read_text())
    assert run["models"]["head"]["variant"] == "clip"
    assert run["models"]["head"]["classes"] == CT_ORGANS
    # liver alone would get the liver window (150, 30); the head trained on abdomen (400, 50)
    assert (run["slicing"]["intensity"]["width"], run["slicing"]["intensity"]["level"]) == (
        400,
        50,
    )


def test_method_head_settings_are_checked(heads, tiny_models, capsys, tmp_path):
    ct = str(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    with pytest.raises(ConfigError, match="--method head needs --head"):
        salip.SegmentConfig().replace(method="head")
    with pytest.raises(ConfigError, match="--head is only read with --method head"):
        salip.SegmentConfig().replace(head="x.pt")
    code = main(["segment", ct, "--organ", "pancreas", "--method", "head", "--head",
                 str(heads["clip"]), "--sam-checkpoint", tiny_models["sam_checkpoint"],
                 "--device", "cpu", "-o", str(tmp_path / "p.nii.gz")])  # fmt: skip
    assert code != 0
    assert "its classes are: liver, spleen, kidneys, aorta" in capsys.readouterr().err
    assert not (tmp_path / "p.nii.gz").exists()


def test_head_refuses_a_sam_set_to_another_preprocessing(heads, tiny_models, capsys, tmp_path):
    """A head learnt on embeddings of one preprocessing profile is not run on another's."""
    ct = str(require_data(TOTALSEG / "example_ct_sm.nii.gz"))
    code = main(["segment", ct, "--organ", "liver", "--method", "head", "--head",
                 str(heads["static"]), "--sam-checkpoint", tiny_models["sam_checkpoint"],
                 "--sam-preprocess", "medsam", "--device", "cpu", "-q",
                 "-o", str(tmp_path / "l.nii.gz")])  # fmt: skip
    assert code != 0
    err = capsys.readouterr().err
    assert "trained on embeddings made with sam preprocessing" in err
    assert "set to medsam (--sam-preprocess)" in err and "pass --sam-preprocess sam" in err
    assert not (tmp_path / "l.nii.gz").exists()


def _bench_config(folder: Path, tiny_models, methods: list[dict]) -> Path:
    text = "[models]\n" + _toml_table(tiny_models)
    for table in methods:
        text += "\n[[methods]]\n" + _toml_table(table)
    text += "\n[[datasets]]\n" + _toml_table(_ct_dataset())
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / "bench.toml"
    path.write_text(text, encoding="utf-8")
    return path


def test_benchmark_has_the_head_rows(heads, tiny_models, tmp_path):
    import shutil

    copies = {v: shutil.copy(heads[v], tmp_path / f"{v}.pt") for v in VARIANT_KIND}
    methods = [
        {"name": f"{kind}-row", "method": kind, "head": f"{variant}.pt"}  # relative path
        for variant, kind in VARIANT_KIND.items()
    ]
    methods.append({"name": "unprompted", "method": "sam-unprompted"})
    config = _bench_config(tmp_path, tiny_models, methods)
    result = run_benchmark(config, out=tmp_path / "out")
    assert result.errors == 0
    cases = pd.read_csv(result.out / "cases.csv")
    assert set(cases["method_kind"]) == {"head", "head-static", "head-randtext", "sam-unprompted"}
    assert (cases["status"] == "ok").all() and len(cases) == 4 * len(CT_ORGANS)
    summary = result.summary_md.read_text()
    for kind in VARIANT_KIND.values():
        assert f"| {kind}-row ‡ |" in summary
    assert "| unprompted |" in summary and "‡ a learned head trained with labels" in summary
    again = run_benchmark(config, out=tmp_path / "out")
    assert (again.computed, again.reused) == (0, 4)  # (case, method) pairs
    # A different head in the same file is a new result: the fingerprint has its hash.
    shutil.copy(heads["static"].parent.parent.parent / "retrained.pt", copies["static"])
    third = run_benchmark(config, out=tmp_path / "out")
    assert (third.computed, third.reused) == (1, 3)


def test_benchmark_head_mistakes_are_explained(heads, tiny_models, tmp_path):
    wrong = [{"name": "h", "method": "head-static", "head": str(heads["clip"])}]
    with pytest.raises(BenchmarkError, match="is a 'clip' head.*use method = 'head'"):
        load_config(_bench_config(tmp_path / "a", tiny_models, wrong))
    missing = [{"name": "h", "method": "head"}]
    with pytest.raises(
        BenchmarkError, match="method 'h' \\(head\\): --method head needs --head PATH"
    ):
        load_config(_bench_config(tmp_path / "b", tiny_models, missing))
    absent = [{"name": "h", "method": "head", "head": "no/such/head.pt"}]
    with pytest.raises(BenchmarkError, match="head file not found: .*no/such/head.pt"):
        load_config(_bench_config(tmp_path / "c", tiny_models, absent))
    cascade = [{"name": "s", "method": "cascade", "head": str(heads["clip"])}]
    with pytest.raises(BenchmarkError, match="setting.s. head not read by this method"):
        load_config(_bench_config(tmp_path / "d", tiny_models, cascade))


def test_train_cases_gives_nested_subsets_with_one_validation_set(
    tiny_models, tmp_path, monkeypatch, capsys
):
    from tests.apps.training.test_train import _slices_dataset

    monkeypatch.setenv("SALIP_HOME", str(tmp_path / "salip_home"))
    # three cases (the CT and two AMOS slices): one held out, two to train on
    config = write_config(
        tmp_path, tiny_models, [_ct_dataset(), _slices_dataset()], val_fraction=0.34,
        epochs=1, steps_per_epoch=1, batch_size=2, warmup_steps=0,
    )  # fmt: skip
    manifests = {}
    for n in ("1", "2"):
        out = tmp_path / f"n{n}"
        # [train] settings come from the command line too, one flag per field
        argv = ["head", "train", "--config", str(config), "--out", str(out), "-q"]
        assert main([*argv, "--train-cases", n, "--variant", "static"]) == 0
        manifests[n] = json.loads((out / "manifest.json").read_text())
    one, two = manifests["1"], manifests["2"]
    assert one["variant"] == two["variant"] == "static"
    assert one["train"]["train_cases"] == 1 and two["train"]["train_cases"] == 2
    assert len(two["data"]["split"]["train"]) == 2
    assert one["data"]["split"]["train"] == two["data"]["split"]["train"][:1]
    assert one["data"]["split"]["val"] == two["data"]["split"]["val"]
    assert len(one["data"]["split"]["val"]) == 1
    # the left-out training case is not even encoded
    assert len(one["data"]["cases"]) == 2 and len(two["data"]["cases"]) == 3

    capsys.readouterr()
    argv = ["head", "train", "--config", str(config), "--out", str(tmp_path / "n3")]
    assert main([*argv, "--train-cases", "3"]) == 1
    assert "only 2 training cases (1 more are held out" in capsys.readouterr().err
    assert main([*argv, "--train-cases", "0"]) == 1
    assert "train_cases must be a whole number >= 1" in capsys.readouterr().err


def test_shipped_head_configs_parse(heads, tmp_path):
    from salip.apps.training.config import load_head_config

    configs = Path(__file__).parent.parent / "benchmarks" / "configs"
    train = load_head_config(configs / "head-amos.toml").train
    assert (train.variant, train.train_cases, train.val_fraction) == ("clip", 30, 0.1)

    # the benchmark config finds its heads relative to its own folder
    bench = tmp_path / "btcv-head.toml"
    bench.write_text((configs / "btcv-head.toml").read_text(encoding="utf-8"), encoding="utf-8")
    for folder, variant in [
        *((f"amos-n{n}", "clip") for n in (1, 5, 10, 30)),
        ("amos-n30-static", "static"),
        ("amos-n30-randtext", "randtext"),
    ]:
        (tmp_path / "heads" / folder).mkdir(parents=True)
        (tmp_path / "heads" / folder / "head.pt").symlink_to(heads[variant])
    config = load_config(bench)
    rows = {m.name: m.kind for m in config.methods}
    assert rows == {
        "salip-default": "cascade",
        "head-n1": "head",
        "head-n5": "head",
        "head-n10": "head",
        "head-n30": "head",
        "head-static-n30": "head-static",
        "head-randtext-n30": "head-randtext",
    }
