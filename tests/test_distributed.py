"""Data-parallel training (2 gloo CPU processes), gradient accumulation, and SIGKILL / corruption faults.

The 2-process runs are forked from the test process (the package is already imported, so they
start in well under a second); one test launches the real command line under ``torchrun``.
Nothing here needs a GPU: the NCCL / CUDA path of `guidegen.distributed` is not exercised.
"""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import signal
import socket
import subprocess
import sys
import time
import traceback
from dataclasses import replace
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from guidegen.checkpoint import save_checkpoint
from guidegen.config import save_config
from guidegen.data.prepare import PrepareConfig, prepare
from guidegen.distributed import (
    DistContext,
    all_reduce_sum,
    batch_shares,
    broadcast_object,
    init_distributed,
    shard_indices,
)
from guidegen.errors import InputError
from guidegen.images.train import _init_model, train_image_generator
from guidegen.masks.config import MaskSamplerConfig
from guidegen.masks.model import MaskDenoiser
from guidegen.masks.train import train_mask_sampler
from guidegen.training import checkpoint_dirs, truncate_log
from tests.conftest import REPO
from tests.images.conftest import TINY_SPACING, tiny_config

#: How far two fp32 runs that differ only in floating-point summation order (one batch of 4 or two
#: micro-batches of 2) may end apart: ‖w_a − w_b‖ / ‖w_a − w_init‖ over the raw weights. It is
#: not ~1e-7 because Adam divides by the gradient RMS: a weight whose true gradient is zero (the
#: bias of a convolution followed by a GroupNorm of one channel per group) moves by ±lr per step
#: following the sign of rounding noise, and the next steps see that. The losses agree to ~1e-7.
REL_L2 = 0.02


@pytest.fixture(scope="module")
def prepared(tmp_path_factory, real):
    out = tmp_path_factory.mktemp("prepared")
    result = prepare(
        [real / "totalseg-example-a", real / "msd-spleen-8"],
        out,
        PrepareConfig(spacing=TINY_SPACING, size_xy=(32, 32)),
        progress=False,
    )
    assert not result.failed
    return out


@pytest.fixture(autouse=True)
def _one_thread():
    """Bit-identical comparisons need the same arithmetic in the parent (reference runs) and in the
    spawned ranks, which run with one thread: a different thread count changes reduction order.
    Per test, because other tests in the same worker (the CLI's ``set_threads``) change it."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _rank_main(rank: int, world: int, port: int, fn, kwargs: dict) -> None:
    os.environ.update(
        RANK=str(rank),
        WORLD_SIZE=str(world),
        LOCAL_RANK=str(rank),
        LOCAL_WORLD_SIZE=str(world),
        MASTER_ADDR="127.0.0.1",
        MASTER_PORT=str(port),
        OMP_NUM_THREADS="1",
    )
    torch.set_num_threads(1)
    try:
        fn(**kwargs)
    except BaseException:
        traceback.print_exc()
        os._exit(1)
    os._exit(0)


def _run_ranks(fn, world: int = 2, timeout: float = 300.0, **kwargs) -> None:
    """Run ``fn(**kwargs)`` in ``world`` forked processes that form a gloo process group."""
    # spawn, not fork: a child forked from a process whose OpenMP / gloo threads already ran can
    # deadlock (it did under pytest-xdist); spawn costs one import per child.
    ctx = mp.get_context("spawn")
    port = _free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, world, port, fn, kwargs)) for r in range(world)]
    for p in procs:
        p.start()
    deadline = time.monotonic() + timeout
    for p in procs:
        p.join(max(1.0, deadline - time.monotonic()))
    for p in procs:
        if p.is_alive():
            p.kill()
            p.join()
    assert [p.exitcode for p in procs] == [0] * world, "a rank failed (see its traceback above)"


def _weights(checkpoint: Path) -> dict[str, torch.Tensor]:
    return {
        **load_file(str(checkpoint / "model.safetensors")),
        **{"raw." + k: v for k, v in load_file(str(checkpoint / "training.safetensors")).items()},
    }


def _max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max(float((a[k].float() - b[k].float()).abs().max()) for k in a)


def _last(run: Path) -> dict[str, torch.Tensor]:
    return _weights(checkpoint_dirs(run)[-1])


def _losses(run: Path) -> list[float]:
    return [json.loads(line)["loss"] for line in (run / "log.jsonl").read_text().splitlines()]


def _distance(
    a: dict[str, torch.Tensor], b: dict[str, torch.Tensor], init: dict[str, torch.Tensor]
) -> tuple[float, float]:
    """(‖a − b‖ / ‖a − init‖, max |a − b|) over the raw weights."""
    keys = [k for k in a if k.startswith("raw.")]
    num = sum(float(((a[k] - b[k]) ** 2).sum()) for k in keys) ** 0.5
    den = sum(float(((a[k] - init[k[4:]]) ** 2).sum()) for k in keys) ** 0.5
    return num / den, max(float((a[k] - b[k]).abs().max()) for k in keys)


def _check_same_training(one: Path, accumulated: Path, two: Path, init: dict[str, torch.Tensor], what: str) -> None:
    """``two`` (2 processes) against ``one`` (1 process, whole batch) and ``accumulated`` (1 process,
    the same micro-batches as the ranks)."""
    w_one, w_acc, w_two = _last(one), _last(accumulated), _last(two)
    # The same micro-batches summed by the all-reduce instead of by accumulation: identical bits.
    assert _max_diff(w_two, w_acc) == 0.0
    rel, top = _distance(w_one, w_two, init)
    print(
        f"{what}, 2 processes vs 1: ‖Δw‖/‖w − w0‖ = {rel:.2e}, max |Δw| = {top:.2e}; "
        f"vs 1 process with the ranks' micro-batches: max |Δw| = 0"
    )
    assert rel < REL_L2
    assert _losses(two) == pytest.approx(_losses(one), rel=1e-5, abs=0)


# ----------------------------------------------------------------------------- helpers


def test_single_process_needs_no_process_group(monkeypatch):
    for name in ("RANK", "WORLD_SIZE", "LOCAL_RANK"):
        monkeypatch.delenv(name, raising=False)
    ctx = init_distributed("cpu")
    assert (ctx.rank, ctx.world_size, ctx.is_main, ctx.distributed, ctx.owns_group) == (0, 1, True, False, False)
    assert not torch.distributed.is_initialized()
    values = torch.tensor([1.0, 2.0])
    assert all_reduce_sum(values, ctx) is values and broadcast_object("x", ctx) == "x"
    assert batch_shares(4, ctx, 2) == [[0, 1], [2, 3]]


def test_shares_are_disjoint_and_cover_the_batch():
    assert [shard_indices(list(range(6)), r, 2) for r in range(2)] == [[0, 1, 2], [3, 4, 5]]
    assert sum((shard_indices(list(range(7)), r, 3) for r in range(3)), []) == list(range(7))
    shares = [batch_shares(8, DistContext(rank=r, world_size=2), 2) for r in range(2)]
    assert shares == [[[0, 1], [2, 3]], [[4, 5], [6, 7]]]
    with pytest.raises(ValueError, match="multiple of processes"):
        batch_shares(6, DistContext(rank=0, world_size=2), 2)


def test_checkpoint_files_and_folders_are_fsynced_before_the_rename(tmp_path, monkeypatch):
    import guidegen.io.atomic as atomic

    events: list[str] = []
    real_fsync, real_replace = os.fsync, os.replace
    monkeypatch.setattr(atomic.os, "fsync", lambda fd: (events.append("fsync"), real_fsync(fd))[1])
    monkeypatch.setattr(atomic.os, "replace", lambda a, b: (events.append("rename"), real_replace(a, b))[1])
    save_checkpoint(
        tmp_path / "ckpt", tiny_config(), {"w": torch.zeros(2)}, training={"step": 1}, raw_weights={"w": torch.ones(2)}
    )
    files = len(list((tmp_path / "ckpt").iterdir()))  # config, model, training ×2, checksums
    # every file and the folder before the rename, the parent folder after it
    assert events == ["fsync"] * (files + 1) + ["rename", "fsync"]


def test_a_log_cut_short_by_a_crash_is_truncated_cleanly(tmp_path):
    log = tmp_path / "log.jsonl"
    log.write_text('{"step": 1}\n{"step": 2}\n{"step": 3}\n{"ste')
    truncate_log(log, 2)
    assert log.read_text() == '{"step": 1}\n{"step": 2}\n'


# ----------------------------------------------------------------------------- equivalence


def test_two_processes_train_the_image_generator_like_one(prepared, tmp_path):
    cfg = tiny_config(batch_size=4, steps=3, checkpoint_every=3, precision="fp32")
    train_image_generator(cfg, prepared, tmp_path / "one", progress=False)
    train_image_generator(replace(cfg, grad_accumulation=2), prepared, tmp_path / "acc", progress=False)
    _run_ranks(train_image_generator, config=cfg, prepared_dir=prepared, run_dir=tmp_path / "two", progress=False)
    _check_same_training(
        tmp_path / "one", tmp_path / "acc", tmp_path / "two", _init_model(cfg).state_dict(), "image generator"
    )
    # Only rank 0 wrote: one log line per logged step, one final model.
    assert [json.loads(line)["step"] for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()] == [2, 3]
    assert (tmp_path / "two" / "model" / "model.safetensors").exists()


def test_two_processes_train_the_mask_sampler_like_one(tmp_path):
    cfg = MaskSamplerConfig(
        shape=(32, 32, 24),
        spacing=(12.0, 12.0, 14.0),
        channels=(8, 16),
        attention_levels=(False, True),
        num_head_channels=8,
        norm_num_groups=8,
        max_text_tokens=16,
        steps=2,
        checkpoint_every=2,
        warmup=2,
        sample_steps=4,
        prepared_cache=str(tmp_path / "cache"),
        precision="fp32",
        batch_size=2,
        drop_text=0.5,
        data_sources=("data/real/totalseg-example-a",),
        min_extent_mm=100.0,
        # The count term is a mean over the batch's (item, class) pairs and the host term over its
        # items: each is split like the voxel loss.
        count_weight=0.5,
        count_classes=("tumour", "liver", "colon"),
        outside_host_weight=0.5,
        p_tumour=1.0,  # the host term counts only items with a tumour
    )
    train_mask_sampler(cfg, tmp_path / "one", progress=False, root=REPO, workers=0)
    train_mask_sampler(replace(cfg, grad_accumulation=2), tmp_path / "acc", progress=False, root=REPO, workers=0)
    _run_ranks(train_mask_sampler, config=cfg, run_dir=tmp_path / "two", progress=False, root=REPO, workers=0)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(cfg.seed)
        init = MaskDenoiser(cfg).state_dict()
    _check_same_training(tmp_path / "one", tmp_path / "acc", tmp_path / "two", init, "mask sampler")
    log1 = [json.loads(line) for line in (tmp_path / "one" / "log.jsonl").read_text().splitlines()]
    log2 = [json.loads(line) for line in (tmp_path / "two" / "log.jsonl").read_text().splitlines()]
    assert [r["step"] for r in log2] == [1, 2] and [r["t"] for r in log2] == [r["t"] for r in log1]


def test_gradient_accumulation_equals_the_whole_batch(prepared, tmp_path):
    whole = tiny_config(batch_size=2, steps=3, checkpoint_every=3, precision="fp32")
    train_image_generator(whole, prepared, tmp_path / "whole", progress=False)
    train_image_generator(replace(whole, grad_accumulation=2), prepared, tmp_path / "accumulated", progress=False)
    rel, top = _distance(_last(tmp_path / "whole"), _last(tmp_path / "accumulated"), _init_model(whole).state_dict())
    print(f"image generator, 2 micro-batches of 1 vs 1 batch of 2: ‖Δw‖/‖w − w0‖ = {rel:.2e}, max |Δw| = {top:.2e}")
    assert rel < REL_L2
    assert _losses(tmp_path / "accumulated") == pytest.approx(_losses(tmp_path / "whole"), rel=1e-5, abs=0)
    with pytest.raises(ValueError, match="grad_accumulation"):
        tiny_config(batch_size=3, grad_accumulation=2)


@pytest.mark.slow
def test_torchrun_command_line(prepared, tmp_path):
    recipe = tmp_path / "recipe.json"
    save_config(tiny_config(batch_size=2, steps=2, checkpoint_every=2), recipe)
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(REPO / "src")}
    torchrun = Path(sys.executable).with_name("torchrun")
    proc = subprocess.run(
        [
            str(torchrun),
            "--standalone",
            "--nproc-per-node",
            "2",
            "-m",
            "guidegen",
            "train",
            "images",
            "--config",
            str(recipe),
            "--prepared",
            str(prepared),
            "--run-dir",
            str(tmp_path / "run"),
            "--quiet",
        ],
        env=env,
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert proc.stdout.count("run folder:") == 2  # both ranks finished
    assert (tmp_path / "run" / "model" / "model.safetensors").exists()
    assert [p.name for p in checkpoint_dirs(tmp_path / "run")] == ["step_00000002"]


# ----------------------------------------------------------------------------- faults


def _train_quietly(**kwargs) -> None:
    torch.set_num_threads(1)
    try:
        train_image_generator(**kwargs)
    finally:
        os._exit(0)


def test_sigkill_then_restart_resumes_from_the_last_checkpoint(prepared, tmp_path):
    cfg = tiny_config(batch_size=2, steps=40, checkpoint_every=4, keep_checkpoints=20, log_every=1)
    run = tmp_path / "killed"
    child = mp.get_context("spawn").Process(
        target=_train_quietly, kwargs=dict(config=cfg, prepared_dir=prepared, run_dir=run, progress=False)
    )
    child.start()
    deadline = time.monotonic() + 300
    while len(checkpoint_dirs(run)) < 2 and child.is_alive() and time.monotonic() < deadline:
        time.sleep(0.01)
    os.kill(child.pid, signal.SIGKILL)
    child.join()
    assert child.exitcode == -signal.SIGKILL
    assert not (run / "model").exists(), "training finished before it could be killed"
    kept = checkpoint_dirs(run)
    last = int(kept[-1].name.split("_")[1])
    logged = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines() if line.strip()]
    assert max(logged) - last <= cfg.checkpoint_every  # at most one checkpoint interval is lost
    stamps = {p.name: (p / "checksums.json").stat().st_mtime_ns for p in kept}

    train_image_generator(cfg, prepared, run, progress=False)  # the restart
    # It resumed: the checkpoints written before the kill were not written again …
    assert {p.name: (p / "checksums.json").stat().st_mtime_ns for p in kept} == stamps
    assert not [p for p in (run / "checkpoints").iterdir() if p.name.startswith(".")]  # no temporary left behind
    log = [json.loads(line)["step"] for line in (run / "log.jsonl").read_text().splitlines()]
    assert log == list(range(1, 41))  # … each step logged once
    # … and ends where an uninterrupted run does, bit for bit.
    train_image_generator(cfg, prepared, tmp_path / "straight", progress=False)
    a, b = _weights(checkpoint_dirs(run)[-1]), _weights(checkpoint_dirs(tmp_path / "straight")[-1])
    assert _max_diff(a, b) == 0.0
    print(f"killed after step {max(logged)} (last checkpoint {last}); resumed and matched the uninterrupted run")

    # A corrupted checkpoint is refused with the file's name, not resumed from.
    newest = checkpoint_dirs(run)[-1]
    data = bytearray((newest / "model.safetensors").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (newest / "model.safetensors").write_bytes(bytes(data))
    with pytest.raises(InputError, match="corrupted") as info:
        train_image_generator(cfg, prepared, run, progress=False)
    assert "model.safetensors" in str(info.value) and newest.name in str(info.value)
    shutil.rmtree(run)
