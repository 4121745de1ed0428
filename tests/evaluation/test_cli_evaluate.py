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
