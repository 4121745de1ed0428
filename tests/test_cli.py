"""The command line meets bad input with one line naming the file, a non-zero exit and no traceback."""

from __future__ import annotations

import shutil
import subprocess
import sys

import nibabel as nib
import numpy as np
import pytest

from guidegen.cli import main


def run(argv, capsys):
    with pytest.raises(SystemExit) as info:
        main(argv)
        raise SystemExit(0)
    out = capsys.readouterr()
    return info.value.code, out.out, out.err


def _one_line_error(err: str, *needles: str) -> None:
    lines = [line for line in err.splitlines() if line.strip()]
    assert len(lines) == 1, err
    assert lines[0].startswith("error: "), err
    assert "Traceback" not in err
    for needle in needles:
        assert needle in lines[0], err


def test_subprocess_exit_code_and_no_traceback(tmp_path):
    missing = tmp_path / "missing.nii.gz"
    proc = subprocess.run(
        [sys.executable, "-m", "guidegen", "report", str(missing)], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 2
    _one_line_error(proc.stderr, str(missing), "no such file")
    debug = subprocess.run(
        [sys.executable, "-m", "guidegen", "--debug", "report", str(missing)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert debug.returncode == 2 and "Traceback" in debug.stderr


@pytest.fixture
def bad_files(tmp_path, real):
    files = {}
    files["not_a_volume"] = tmp_path / "notes.nii.gz"
    files["not_a_volume"].write_text("these are not voxels")
    data = (real / "totalseg-example-a" / "labels.nii.gz").read_bytes()
    files["truncated"] = tmp_path / "truncated.nii.gz"
    files["truncated"].write_bytes(data[: len(data) // 3])
    files["float_labels"] = tmp_path / "float.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 0.5, np.float32), np.eye(4)), str(files["float_labels"]))
    files["negative_labels"] = tmp_path / "negative.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), -3, np.int16), np.eye(4)), str(files["negative_labels"]))
    files["unknown_ids"] = tmp_path / "unknown.nii.gz"
    nib.save(nib.Nifti1Image(np.full((8, 8, 8), 200, np.uint8), np.eye(4)), str(files["unknown_ids"]))
    files["empty"] = tmp_path / "empty.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((8, 8, 8), np.uint8), np.eye(4)), str(files["empty"]))
    files["two_d"] = tmp_path / "slice.nii.gz"
    nib.save(nib.Nifti1Image(np.zeros((64, 64), np.uint8), np.eye(4)), str(files["two_d"]))
    return files


@pytest.mark.parametrize(
    "key, problem",
    [
        ("not_a_volume", "not a readable NIfTI"),
        ("truncated", "truncated or corrupt"),
        ("float_labels", "non-integer"),
        ("negative_labels", "negative"),
        ("unknown_ids", "does not define"),
        ("empty", "empty"),
        ("two_d", "2-D image"),
    ],
)
def test_report_bad_input(bad_files, capsys, key, problem):
    code, out, err = run(["report", str(bad_files[key]), "--vocabulary", "totalsegmentator"], capsys)
    assert code == 2
    _one_line_error(err, str(bad_files[key]), problem)


def test_report_needs_a_vocabulary(tmp_path, real, capsys):
    labels = tmp_path / "labels.nii.gz"
    shutil.copy(real / "amos-0013-slices" / "labels.nii.gz", labels)
    code, _, err = run(["report", str(labels)], capsys)
    assert code == 2
    _one_line_error(err, str(labels), "vocabulary")


def test_prepare_mixed_dicom_series(tmp_path, real, capsys):
    mixed = tmp_path / "mixed"
    mixed.mkdir()
    for f in (real / "totalseg-example-b" / "dicom").iterdir():
        shutil.copy(f, mixed / f.name)
    for f in (real / "dcmqi-ct-3slice" / "ct").iterdir():
        shutil.copy(f, mixed / f"other-{f.name}")
    code, out, err = run(["prepare", str(mixed), "--out", str(tmp_path / "out"), "-q"], capsys)
    assert code == 1
    assert "series" in err and str(mixed) in err and "Traceback" not in err
    assert list((tmp_path / "out" / "cases").iterdir()) == []  # nothing half-written


def test_prepare_bad_options(tmp_path, real, capsys):
    code, _, err = run(
        ["prepare", str(real / "totalseg-example-a"), "--out", str(tmp_path / "o"), "--spacing", "0,1,1"], capsys
    )
    assert code == 2
    _one_line_error(err, "--spacing")
    code, _, err = run(["prepare", str(tmp_path / "nowhere"), "--out", str(tmp_path / "o")], capsys)
    assert code == 2
    _one_line_error(err, "nowhere", "no such file")


def test_report_on_real_totalsegmentator_labels(real, capsys):
    code, out, err = run(
        ["report", str(real / "totalseg-example-a" / "labels.nii.gz"), "--json", "--seed", "3"], capsys
    )
    assert code == 0, err
    lowered = out.lower()
    for organ in ("liver", "spleen", "kidney"):
        assert organ in lowered
    # --json appends the attribute record after the report text.
    import json

    record = json.loads(out[out.index("\n{") + 1 :])
    assert 1000 <= record["organs"]["liver"]["volume_ml"] <= 2500


def test_report_writes_file_and_refuses_overwrite(tmp_path, real, capsys):
    target = tmp_path / "report.txt"
    code, _, _ = run(["report", str(real / "totalseg-example-a" / "labels.nii.gz"), "-o", str(target)], capsys)
    assert code == 0 and target.read_text().strip()
    code, _, err = run(["report", str(real / "totalseg-example-a" / "labels.nii.gz"), "-o", str(target)], capsys)
    assert code == 2
    _one_line_error(err, str(target), "already exists")


def test_demo_writes_its_outputs(tmp_path, capsys):
    out = tmp_path / "demo"
    code, stdout, err = run(["demo", "--out", str(out)], capsys)
    assert code == 0, err
    for name in ("ct.nii.gz", "labels.nii.gz", "report.txt", "attributes.json", "preview.png"):
        assert (out / name).stat().st_size > 0, name
    ct, labels = nib.load(str(out / "ct.nii.gz")), nib.load(str(out / "labels.nii.gz"))
    assert ct.shape == labels.shape and np.allclose(ct.affine, labels.affine)
    assert ct.get_data_dtype() == np.int16 and labels.get_data_dtype() == np.uint8
    assert (out / "preview.png").read_bytes()[:4] == b"\x89PNG"
    code, _, err = run(["demo", "--out", str(out)], capsys)
    assert code == 2
    _one_line_error(err, str(out), "already exists")
