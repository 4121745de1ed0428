"""`guidegen evaluate` and `guidegen evaluate downstream` from the command line (tiny synthetic cases)."""

from __future__ import annotations

import json

from tests.evaluation.test_realism import synthetic_case
from tests.evaluation.test_report import write_case
from tests.test_cli import _one_line_error, run


def _folders(root):
    for i in range(3):
        write_case(root / "generated" / f"g{i}", synthetic_case(seed=10 + i), {"prompt": "liver and spleen"})
        write_case(root / "real" / f"r{i}", synthetic_case(seed=i))
    return root / "generated", root / "real"


def test_evaluate_writes_a_report(tmp_path, capsys):
    generated, real = _folders(tmp_path)
    code, out, err = run(
        [
            "evaluate",
            "--generated",
            str(generated),
            "--real",
            str(real),
            "--out",
            str(tmp_path / "rep"),
            "--judge-steps",
            "10",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    metrics = json.loads((tmp_path / "rep" / "metrics.json").read_text())
    assert metrics and (tmp_path / "rep" / "report.md").is_file() and "report.md" in out
    code, _, err = run(
        [
            "evaluate",
            "--generated",
            str(generated),
            "--real",
            str(real),
            "--out",
            str(tmp_path / "rep"),
            "--judge-steps",
            "10",
            "-q",
        ],
        capsys,
    )
    assert code == 2
    _one_line_error(err, "rep", "--overwrite")


def test_evaluate_needs_both_folders_and_downstream_checks_seeds(tmp_path, capsys):
    code, _, err = run(["evaluate", "--generated", str(tmp_path)], capsys)
    assert code == 2
    _one_line_error(err, "--generated/--real")
    generated, real = _folders(tmp_path)
    code, _, err = run(
        [
            "evaluate",
            "downstream",
            "--real",
            str(real),
            "--synthetic",
            str(generated),
            "--seeds",
            "a,b",
            "--out",
            str(tmp_path / "d"),
        ],
        capsys,
    )
    assert code == 2
    _one_line_error(err, "--seeds")


def test_downstream_writes_a_dice_table(tmp_path, capsys):
    generated, real = _folders(tmp_path)
    code, out, err = run(
        [
            "evaluate",
            "downstream",
            "--real",
            str(real),
            "--synthetic",
            str(generated),
            "--seeds",
            "0",
            "--steps",
            "5",
            "--out",
            str(tmp_path / "d"),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "d" / "downstream.json").read_text())
    assert set(result["settings"]) == {"real", "synthetic", "real+synthetic"} and len(result["real_test"]) == 1
    assert "| **mean** |" in out


def test_a_generate_output_folder_is_read_as_case_folders(tmp_path):
    from guidegen.evaluation.cases import load_cases

    generated, _ = _folders(tmp_path)
    (generated / "manifest.json").write_text(
        json.dumps({"format_version": 1, "cases": [], "finished": 0, "requested": 3, "complete": True})
    )
    assert len(load_cases(generated)) == 3


def test_downstream_scores_chosen_classes_and_training_sets(tmp_path, capsys):
    generated, real = _folders(tmp_path)
    base = ["evaluate", "downstream", "--real", str(real), "--synthetic", str(generated), "--seeds", "0"]
    code, out, err = run(
        [
            *base,
            "--steps",
            "5",
            "--classes",
            "liver",
            "--settings",
            "real,real+synthetic",
            "--out",
            str(tmp_path / "d"),
        ],
        capsys,
    )
    assert code == 0, err
    result = json.loads((tmp_path / "d" / "downstream.json").read_text())
    assert set(result["settings"]) == {"real", "real+synthetic"}
    for setting in result["settings"].values():
        assert set(setting["per_class"]) <= {"liver"}
    code, _, err = run([*base, "--classes", "lungs", "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "--classes" in err and not (tmp_path / "e").exists()
    code, _, err = run([*base, "--settings", "synthetic,both", "--out", str(tmp_path / "e")], capsys)
    assert code == 2 and "--settings" in err and not (tmp_path / "e").exists()


def _abdomen(spacing: float, shift: int = 0):
    """A small label map in GuideGen ids: kidneys, liver, spleen, pancreas and a box of colon, RAS."""
    import numpy as np

    from guidegen.io.volume import Volume
    from guidegen.labels.vocabulary import ID

    scale = 8.0 / spacing
    shape = tuple(int(round(n * scale)) for n in (40, 28, 40))
    array = np.zeros(shape, np.uint8)

    def box(name, lo, hi):
        array[tuple(slice(int(round(a * scale)), int(round(b * scale))) for a, b in zip(lo, hi))] = ID[name]

    box("colon", (6, 8, 4), (34, 20, 34))
    box("small_bowel", (10, 10, 6), (30, 18, 30))
    box("kidney_left", (8, 6, 16), (12, 10, 21))
    box("kidney_right", (28, 6, 16), (32, 10, 21))
    box("liver", (20 + shift, 8, 24), (34, 20, 32))
    box("spleen", (6, 6, 24), (11, 11, 29))
    box("pancreas", (14, 12, 20), (22, 14, 22))
    return Volume(array, np.diag([spacing, spacing, spacing, 1.0]), "labels")


def test_evaluate_masks_compares_sampled_with_real_maps(tmp_path, capsys):
    import numpy as np

    from guidegen.evaluation.mask_realism import on_spacing
    from guidegen.io.nifti import write_nifti

    fine = _abdomen(4.0)
    coarse = on_spacing(fine, (8.0, 8.0, 8.0))  # shape-based resampling of boxes: the same boxes
    assert coarse.spacing == (8.0, 8.0, 8.0) and np.array_equal(coarse.array, _abdomen(8.0).array)
    real = tmp_path / "real.nii.gz"
    write_nifti(fine, real)
    sampled = tmp_path / "sampled"
    for i, shift in enumerate((0, -2)):
        (sampled / f"sample_{i:03d}").mkdir(parents=True)
        write_nifti(_abdomen(8.0, shift), sampled / f"sample_{i:03d}" / "labels.nii.gz")
    (sampled / "prompt.json").write_text(json.dumps({"prompt": "normal CT of the abdomen and pelvis"}))
    code, out, err = run(
        [
            "evaluate",
            "masks",
            "-s",
            str(sampled),
            "-r",
            str(real),
            "--vocabulary",
            "guidegen",
            "-o",
            str(tmp_path / "o"),
        ],
        capsys,
    )
    assert code == 0, err
    results = json.loads((tmp_path / "o" / "realism.json").read_text())
    rows = {(r["organ"], r["feature"]): r for r in results["comparison"]["rows"]}
    # Sample 0 is the real map; sample 1 has a bigger liver reaching 16 mm further to the left.
    assert rows["liver", "volume_ml"]["in_range"] == 1 and rows["kidney_left", "volume_ml"]["in_range"] == 2
    assert rows["liver", "x_mm"]["real"] == [rows["liver", "x_mm"]["sampled_range"][1]]
    assert results["comparison"]["n_real"] == 1 and results["comparison"]["n_sampled"] == 2
    assert results["prompt"] == "normal CT of the abdomen and pelvis" and "unstated" in results
    assert "liver" in out and "unstated organs" in out and (tmp_path / "o" / "realism.txt").is_file()
    code, _, err = run(["evaluate", "masks", "-s", str(tmp_path), "-r", str(real), "-o", str(tmp_path / "p")], capsys)
    assert code == 2
    _one_line_error(err, "sample_")
