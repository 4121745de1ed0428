"""`guidegen generate` and `guidegen train demo` from the command line: results, summaries, one-line errors."""

from __future__ import annotations

import json

import pytest

from tests.test_cli import _one_line_error, run


def test_generate_writes_cases_and_summary(tiny_model, tmp_path, capsys):
    out = tmp_path / "out"
    code, stdout, err = run(
        [
            "generate",
            "--prompt",
            "enlarged spleen, non-contrast",
            "-n",
            "2",
            "--seed",
            "4",
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    assert "2 case(s) generated, 0 already there, 2 requested" in stdout and "manifest" in stdout
    meta = json.loads((out / "case_000001" / "case.json").read_text())
    assert (
        meta["seed"] == 5
        and meta["phase"] == "non_contrast"
        and meta["requested"]["organs"]["spleen"]["state"] == "enlarged"
    )
    # The same command again completes nothing new and overwrites nothing.
    code, stdout, err = run(
        [
            "generate",
            "--prompt",
            "enlarged spleen, non-contrast",
            "-n",
            "2",
            "--seed",
            "4",
            "--model",
            str(tiny_model),
            "--out",
            str(out),
            "-q",
        ],
        capsys,
    )
    assert code == 0 and "0 case(s) generated, 2 already there" in stdout


def test_generate_from_a_prompt_file(tiny_model, tmp_path, capsys):
    prompts = tmp_path / "prompts.csv"
    prompts.write_text("prompt,count\n3 cm pancreatic tumour,2\nnormal abdomen,1\n", encoding="utf-8")
    code, stdout, err = run(
        [
            "generate",
            "--prompts",
            str(prompts),
            "--model",
            str(tiny_model),
            "--out",
            str(tmp_path / "o"),
            "--batch-size",
            "2",
            "-q",
        ],
        capsys,
    )
    assert code == 0, err
    manifest = json.loads((tmp_path / "o" / "manifest.json").read_text())
    assert [c["prompt"] for c in manifest["cases"]] == ["3 cm pancreatic tumour"] * 2 + ["normal abdomen"]
    assert manifest["complete"]


@pytest.mark.parametrize(
    "args, needles",
    [
        (["--out", "{tmp}/o"], ["--prompt/--prompts", "exactly one"]),
        (["--prompt", "liver", "--prompts", "{tmp}/p.txt", "--out", "{tmp}/o"], ["exactly one"]),
        (["--prompt", "   ", "--out", "{tmp}/o"], ["--prompt", "empty"]),
        (["--prompt", "liver tumour", "--format", "mha", "--out", "{tmp}/o"], ["--format", "nifti, nnunet, dicom"]),
        (["--prompt", "liver tumour", "--steps", "0", "--out", "{tmp}/o"], ["--steps"]),
        (["--prompt", "liver tumour", "--steps", "5000", "--out", "{tmp}/o"], ["--steps", "at most"]),
        (["--prompt", "liver tumour", "--guidance", "-1", "--out", "{tmp}/o"], ["--guidance"]),
        (["--prompt", "liver tumour", "--phase", "venous-ish", "--out", "{tmp}/o"], ["--phase"]),
        (["--prompt", "liver tumour", "--dataset-id", "0", "--format", "nnunet", "--out", "{tmp}/o"], ["--dataset-id"]),
        (["--prompts", "{tmp}/missing.txt", "--out", "{tmp}/o"], ["missing.txt", "cannot be read"]),
        (["--prompt", "x" * 3000, "--out", "{tmp}/o"], ["--prompt", "characters long"]),
    ],
)
def test_generate_bad_options_give_one_line_errors(tiny_model, tmp_path, capsys, args, needles):
    args = [a.replace("{tmp}", str(tmp_path)) for a in args]
    code, _, err = run(["generate", "--model", str(tiny_model), "-q", *args], capsys)
    assert code == 2
    _one_line_error(err, *needles)
    assert not (tmp_path / "o").exists()


def test_generate_refuses_missing_model_and_foreign_folders(tiny_model, tmp_path, capsys):
    code, _, err = run(
        ["generate", "--prompt", "liver tumour", "--model", str(tmp_path / "nope"), "--out", str(tmp_path / "o")],
        capsys,
    )
    assert code == 2
    _one_line_error(err, "nope", "model folder not found")
    (tmp_path / "busy").mkdir()
    (tmp_path / "busy" / "notes.txt").write_text("mine")
    code, _, err = run(
        ["generate", "--prompt", "liver tumour", "--model", str(tiny_model), "--out", str(tmp_path / "busy"), "-q"],
        capsys,
    )
    assert code == 2
    _one_line_error(err, "busy", "--overwrite")
    assert (tmp_path / "busy" / "notes.txt").read_text() == "mine"


def test_train_demo_refuses_to_replace_a_model(tmp_path, capsys):
    (tmp_path / "model").mkdir()
    code, _, err = run(["train", "demo", "--out", str(tmp_path / "model"), "--runs", str(tmp_path / "runs")], capsys)
    assert code == 2
    _one_line_error(err, "model", "--overwrite")
    assert not (tmp_path / "runs").exists()
