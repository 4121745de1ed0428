"""`guidegen generate` as real processes: two torchrun ranks (gloo), and a run killed with SIGKILL."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import nibabel as nib
import numpy as np

PROMPT = "3 cm liver tumour"


def _env():
    return dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1")


def _arrays(folder):
    return tuple(np.asarray(nib.load(str(folder / f)).dataobj) for f in ("ct.nii.gz", "labels.nii.gz"))


def _generate(model, out, *extra):
    return [
        sys.executable,
        "-m",
        "guidegen",
        "generate",
        "--prompt",
        PROMPT,
        "-n",
        "4",
        "--seed",
        "3",
        "--model",
        str(model),
        "--out",
        str(out),
        "--batch-size",
        "1",
        "--threads",
        "1",
        "-q",
        *extra,
    ]


def test_two_torchrun_ranks_split_the_cases_and_match_one_process(tiny_model, tmp_path):
    one = subprocess.run(
        _generate(tiny_model, tmp_path / "one"), env=_env(), capture_output=True, text=True, timeout=300
    )
    assert one.returncode == 0, one.stderr[-2000:]
    cmd = [
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--standalone",
        "--nproc-per-node",
        "2",
        "-m",
        "guidegen",
        *_generate(tiny_model, tmp_path / "two")[3:],
    ]
    two = subprocess.run(cmd, env=_env(), capture_output=True, text=True, timeout=300)
    assert two.returncode == 0, two.stderr[-3000:]
    assert "4 case(s) generated" not in two.stdout or "on 2 ranks" in two.stdout
    for i in range(4):
        case = f"case_{i:06d}"
        (ct1, lab1), (ct2, lab2) = _arrays(tmp_path / "one" / case), _arrays(tmp_path / "two" / case)
        # Same batch size (1) and threads (1) on both sides: labels identical, CT within rounding.
        assert np.array_equal(lab1, lab2)
        assert np.abs(ct1.astype(np.int32) - ct2.astype(np.int32)).max() <= 1
    assert '"complete": true' in (tmp_path / "two" / "manifest.json").read_text()


def test_a_killed_generation_leaves_only_whole_cases_and_a_rerun_completes_it(tiny_model, tmp_path):
    out = tmp_path / "out"
    proc = subprocess.Popen(_generate(tiny_model, out), env=_env(), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.time() + 240
    while time.time() < deadline and not (out / "case_000001").exists():
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    assert proc.poll() is None, "the run finished before it could be killed"
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    finished = sorted(p.name for p in out.glob("case_*"))
    assert finished and len(finished) < 4
    for name in finished:  # every case folder that exists is complete
        assert sorted(p.name for p in (out / name).iterdir()) == [
            "case.json",
            "ct.nii.gz",
            "labels.nii.gz",
            "preview.png",
            "report.txt",
        ]
    rerun = subprocess.run(_generate(tiny_model, out), env=_env(), capture_output=True, text=True, timeout=300)
    assert rerun.returncode == 0, rerun.stderr[-2000:]
    assert "already there" in rerun.stdout
    assert sorted(p.name for p in out.glob("case_*")) == [f"case_{i:06d}" for i in range(4)]
    assert not list(out.glob(".*.tmp"))
    reference = tmp_path / "ref"
    ok = subprocess.run(_generate(tiny_model, reference), env=_env(), capture_output=True, text=True, timeout=300)
    assert ok.returncode == 0, ok.stderr[-2000:]
    for i in range(4):
        a, b = _arrays(out / f"case_{i:06d}"), _arrays(reference / f"case_{i:06d}")
        assert all(np.array_equal(x, y) for x, y in zip(a, b))
