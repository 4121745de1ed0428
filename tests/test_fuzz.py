"""Fuzzing the command line: generated bad inputs to `prepare`, `report`, `generate` and `generate-ct`.

Every input (corrupt or truncated NIfTI headers and bodies, wrong dtypes, NaN/inf, absurd
spacings, huge declared dimensions, odd Unicode and 10 000-character prompts, bad option values …)
must end in either

* a clear error: exit status 2 and exactly one line on stderr, ``error: PATH: PROBLEM`` (or click's
  usage message for a malformed option value); for ``prepare`` a case that fails is listed as
  ``error: CASE: …`` and the exit status is 1, as `prepare` documents; or
* a valid result: exit status 0, nothing on stderr, and outputs that nibabel reads, CT and labels
  on one grid;

never an internal error (exit 1 "internal error"), a traceback or a hang (60 s), and never a
partial output: no temporary left behind, and after an error no output folder (``generate`` may
keep the ``run.json`` that lets the same command resume). stderr is what a terminal would show:
nibabel's log and Python warnings are sent there too. A huge declared volume may not make the
reader allocate more than a few MiB. Every input is small (at most a few thousand voxels).

The inputs come from a fixed seed: a failure names its case (``pytest -k 'report and flip'``) and
reproduces. ``pytest -s`` prints how many inputs each command got and how they ended;
``GUIDEGEN_FUZZ_LOG=FILE`` writes one line per input with its outcome and message.

A full disk (``ENOSPC``/``EDQUOT``) during a write is simulated at the end: one-line error, nothing
half-written, and the same command completes the work once there is space again.
"""

from __future__ import annotations

import errno
import gzip
import json
import logging
import os
import signal
import struct
import sys
import tracemalloc
import warnings
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import nibabel as nib
import numpy as np
import pytest

from tests.conftest import REAL
from tests.pipeline.conftest import tiny_model  # noqa: F401  (a session fixture, used by name)
from tests.test_cli import _one_line_error, run

SEED = 20240807
#: Seconds one input may take before it counts as a hang.
HANG_S = 60
#: A huge declared volume may not make the reader allocate more than this many bytes.
HUGE_ALLOC_LIMIT = 64 * 2**20

SHAPE = (12, 12, 10)
AFFINE = np.diag([10.0, 10.0, 12.0, 1.0])
VOCAB = ["--vocabulary", "totalsegmentator"]
#: Cheap sampling for the inputs that do generate (one thread: see `_fast_torch`).
FAST_GEN = ["--steps", "1", "--image-steps", "1", "--threads", "1", "-q"]
FAST_CT = ["--steps", "1"]
PREPARE_OPTS = ["--spacing", "12", "--size", "16", "-q"]

OUTCOMES: Counter = Counter()


# --------------------------------------------------------------------------------------------------
# Valid starting points


def _labels() -> np.ndarray:
    a = np.zeros(SHAPE, np.uint8)
    a[1:7, 2:9, 1:8] = 5  # liver (TotalSegmentator ids)
    a[7:11, 3:7, 2:7] = 1  # spleen
    a[8:11, 8:11, 1:4] = 2  # right kidney
    return a


def _ct() -> np.ndarray:
    ct = np.full(SHAPE, -1000, np.int16)
    ct[1:11, 1:11, :] = 40
    ct[1:7, 2:9, 1:8] = 60
    return ct


def _nii(array: np.ndarray, affine: np.ndarray = AFFINE, nifti2: bool = False) -> bytearray:
    """The bytes of a single-file NIfTI with qform and sform set."""
    image = (nib.Nifti2Image if nifti2 else nib.Nifti1Image)(array, affine, dtype=array.dtype)
    image.set_qform(affine, code=1)
    image.set_sform(affine, code=1)
    return bytearray(image.to_bytes())


def _write(path: Path, raw: bytes | bytearray, gz: bool | None = None) -> Path:
    gz = path.name.endswith(".gz") if gz is None else gz
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(gzip.compress(bytes(raw), mtime=0) if gz else bytes(raw))
    return path


# NIfTI-1 header fields: (byte offset, struct format).
DIM, PIXDIM = 40, 76
FIELDS = {
    "sizeof_hdr": (0, "<i"),
    "datatype": (70, "<h"),
    "bitpix": (72, "<h"),
    "vox_offset": (108, "<f"),
    "scl_slope": (112, "<f"),
    "scl_inter": (116, "<f"),
    "qform_code": (252, "<h"),
    "sform_code": (254, "<h"),
    "quatern_b": (256, "<f"),
    "quatern_c": (260, "<f"),
    "quatern_d": (264, "<f"),
    "qoffset_x": (268, "<f"),
    "srow_x": (280, "<4f"),
    "srow_y": (296, "<4f"),
    "srow_z": (312, "<4f"),
    "magic": (344, "4s"),
}


def _set(raw: bytearray, field: str, *values) -> bytearray:
    offset, fmt = FIELDS[field]
    struct.pack_into(fmt, raw, offset, *values)
    return raw


def _set_dim(raw: bytearray, index: int, value: int) -> bytearray:
    struct.pack_into("<h", raw, DIM + 2 * index, value)
    return raw


def _set_pixdim(raw: bytearray, index: int, value: float) -> bytearray:
    struct.pack_into("<f", raw, PIXDIM + 4 * index, value)
    return raw


def _pixdim_only(raw: bytearray) -> bytearray:
    """Codes 0: the affine comes from pixdim alone."""
    return _set(_set(raw, "qform_code", 0), "sform_code", 0)


# --------------------------------------------------------------------------------------------------
# Mutations of a valid NIfTI-1 file: name → function(raw bytes) → bytes. Used on label maps and CTs.

nan, inf = float("nan"), float("inf")
rng = np.random.default_rng(SEED)
MUTATIONS: list[tuple[str, Callable[[bytearray], bytes | bytearray]]] = []


def mutation(name: str):
    def register(fn):
        MUTATIONS.append((name, fn))
        return fn

    return register


for _v in (0, -1, 347, 540, 2**30):
    mutation(f"sizeof_hdr={_v}")(lambda r, v=_v: _set(r, "sizeof_hdr", v))
for _v in (b"\0\0\0\0", b"n+2\0", b"ni1\0", b"XXXX"):
    mutation(f"magic={_v!r}")(lambda r, v=_v: _set(r, "magic", v))
for _v in (0, -1, 2, 8, 100, 32767):
    mutation(f"dim0={_v}")(lambda r, v=_v: _set_dim(r, 0, v))
for _i, _v in ((1, 0), (1, -5), (2, -32768), (3, 32767), (3, 0)):
    mutation(f"dim{_i}={_v}")(lambda r, i=_i, v=_v: _set_dim(r, i, v))
# Huge declared volumes in a tiny file: must be refused without allocating the declared size.
mutation("huge-32767^3")(lambda r: [_set_dim(r, i, 32767) for i in (1, 2, 3)] and r)
mutation("huge-1024^3")(lambda r: [_set_dim(r, i, 1024) for i in (1, 2, 3)] and r)
mutation("huge-1024x1024x512")(lambda r: [_set_dim(r, i, v) for i, v in ((1, 1024), (2, 1024), (3, 512))] and r)
for _v in (0.0, -1.0, nan, inf, 1e30, 1e-30, 1e-3, 150.0):
    mutation(f"pixdim1={_v}")(lambda r, v=_v: _set_pixdim(_pixdim_only(r), 1, v))
for _v in (nan, -inf):
    mutation(f"pixdim3={_v}")(lambda r, v=_v: _set_pixdim(_pixdim_only(r), 3, v))
for _v in (0.0, 5.0, nan):
    mutation(f"qfac={_v}")(lambda r, v=_v: _set_pixdim(r, 0, v))
for _field, _v in (("quatern_b", nan), ("quatern_c", inf), ("quatern_d", 2.0), ("qoffset_x", inf)):
    mutation(f"qform-{_field}={_v}")(
        lambda r, f=_field, v=_v: _set(_set(_set(r, "sform_code", 0), "qform_code", 1), f, v)
    )
for _name, _row in (
    ("nan", (nan, 0, 0, 0)),
    ("inf", (inf, 0, 0, 0)),
    ("1e30", (1e30, 0, 0, 0)),
    ("zero", (0, 0, 0, 0)),
    ("offset-inf", (10, 0, 0, inf)),
    ("tiny", (1e-4, 0, 0, 0)),
):
    mutation(f"sform-row-{_name}")(lambda r, row=_row: _set(r, "srow_x", *row))
mutation("sform-singular")(lambda r: _set(_set(r, "srow_x", 10, 0, 0, 0), "srow_y", 10, 0, 0, 0))
mutation("sform-oblique")(lambda r: _set(_set(r, "srow_x", 7.07, -7.07, 0, 0), "srow_y", 7.07, 7.07, 0, 0))
mutation("sform-left-handed")(lambda r: _set(r, "srow_x", -10, 0, 0, 0))
for _field, _v in (("sform_code", 99), ("sform_code", -3), ("qform_code", 77)):
    mutation(f"{_field}={_v}")(lambda r, f=_field, v=_v: _set(r, f, v))
for _v in (0, 999, 128, 2304, 1, 32, 1792, 2048, 1536):
    mutation(f"datatype={_v}")(lambda r, v=_v: _set(r, "datatype", v))
for _v in (0, 3, -8):
    mutation(f"bitpix={_v}")(lambda r, v=_v: _set(r, "bitpix", v))
for _v in (0.0, -100.0, 1e30, 1e6, nan, 353.0):
    mutation(f"vox_offset={_v}")(lambda r, v=_v: _set(r, "vox_offset", v))
for _v in (nan, inf, 0.5, 1e30, -1.0):
    mutation(f"scl_slope={_v}")(lambda r, v=_v: _set(r, "scl_slope", v))
for _v in (nan, -inf, 0.5, -300.0):
    mutation(f"scl_inter={_v}")(lambda r, v=_v: _set(r, "scl_inter", v))
for _k in range(16):
    _count = int(rng.integers(1, 12))
    _at, _to = rng.integers(0, 348, _count), rng.integers(0, 256, _count)

    def _flip(r, at=_at, to=_to):
        for a, t in zip(at, to):
            r[int(a)] = int(t)
        return r

    mutation(f"header-flip-{_k}")(_flip)
for _k in range(6):
    _count = int(rng.integers(1, 40))
    _at, _to = rng.integers(352, 352 + int(np.prod(SHAPE)), _count), rng.integers(0, 256, _count)

    def _flip_body(r, at=_at, to=_to):
        for a, t in zip(at, to):
            r[int(a)] = int(t)
        return r

    mutation(f"body-flip-{_k}")(_flip_body)
for _n in (0, 1, 100, 347, 348, 352, 700):
    mutation(f"truncate-{_n}")(lambda r, n=_n: r[:n])


# --------------------------------------------------------------------------------------------------
# Files that are not what their name says, and other data: name → function(folder) → path.


def _compressed_truncated(fraction: float, array: np.ndarray) -> Callable[[Path, str], Path]:
    def make(folder: Path, name: str) -> Path:
        data = gzip.compress(bytes(_nii(array)), mtime=0)
        return _write(folder / name, data[: max(1, int(len(data) * fraction))], gz=False)

    return make


def _file_of(content: bytes) -> Callable[[Path, str], Path]:
    return lambda folder, name: _write(folder / name, content, gz=False)


def _image_of(array, affine=AFFINE, nifti2=False, gz=True) -> Callable[[Path, str], Path]:
    def make(folder: Path, name: str) -> Path:
        if not gz:
            name = name.removesuffix(".gz")
        return _write(folder / name, _nii(array, affine, nifti2), gz=gz)

    return make


def _huge_nifti2(folder: Path, name: str) -> Path:
    header = nib.Nifti2Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape((100_000, 100_000, 100_000))
    return _write(folder / name, bytes(header.binaryblock) + b"\0" * 4 + b"\1" * 64)


def _huge_nifti2_in_limit(folder: Path, name: str) -> Path:
    header = nib.Nifti2Header()
    header.set_data_dtype(np.float64)
    header.set_data_shape((1024, 1024, 1000))  # < 2**30 voxels but 8 GB of float64
    return _write(folder / name, bytes(header.binaryblock) + b"\0" * 4 + b"\1" * 64)


def _folder_named(folder: Path, name: str) -> Path:
    (folder / name).mkdir(parents=True)
    return folder / name


def _missing(folder: Path, name: str) -> Path:
    return folder / name


def _broken_link(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(folder / "nowhere.nii.gz")
    return folder / name


def _link_loop(folder: Path, name: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    (folder / name).symlink_to(folder / name)
    return folder / name


def _stream(name: str) -> np.random.Generator:
    """A generator of its own for an input built lazily, so that it is the same whichever cases run."""
    return np.random.default_rng([SEED, sum(name.encode())])


def _flipped(data: bytes, count: int) -> bytes:
    """``count`` bytes after the DICOM preamble set to seeded random values."""
    raw, r = bytearray(data), _stream("flipped")
    for at, to in zip(r.integers(132, len(raw), count), r.integers(0, 256, count)):
        raw[int(at)] = int(to)
    return bytes(raw)


def _rgb(array: np.ndarray) -> np.ndarray:
    out = np.zeros(array.shape, [("R", "u1"), ("G", "u1"), ("B", "u1")])
    out["R"] = array
    return out


RAW_FILES: list[tuple[str, Callable[[Path, str], Path]]] = [
    ("empty-file", _file_of(b"")),
    ("text-file", _file_of(b"these are not voxels\n")),
    ("random-bytes", _file_of(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes())),
    ("random-bytes-gzipped", _file_of(gzip.compress(rng.integers(0, 256, 2000, dtype=np.uint8).tobytes(), mtime=0))),
    ("gzip-header-only", _file_of(b"\x1f\x8b\x08\x00\x00\x00\x00\x00")),
    ("plain-nii-named-gz", lambda f, n: _write(f / n, _nii(_labels()), gz=False)),
    ("gz-of-gz", lambda f, n: _write(f / n, gzip.compress(gzip.compress(bytes(_nii(_labels())))), gz=False)),
    ("png-named-nii", _file_of(b"\x89PNG\r\n\x1a\n" + bytes(200))),
    ("header-only", lambda f, n: _write(f / n, _nii(_labels())[:352])),
    ("gz-truncated-10pc", _compressed_truncated(0.1, _labels())),
    ("gz-truncated-50pc", _compressed_truncated(0.5, _labels())),
    ("gz-truncated-95pc", _compressed_truncated(0.95, _labels())),
    (
        "gz-trailing-garbage",
        lambda f, n: _write(f / n, gzip.compress(bytes(_nii(_labels())), mtime=0) + b"garbage", gz=False),
    ),
    ("nifti2-huge-100000^3", _huge_nifti2),
    ("nifti2-huge-8GB", _huge_nifti2_in_limit),
    ("nifti2-valid", _image_of(_labels(), nifti2=True)),
    ("uncompressed-valid", _image_of(_labels(), gz=False)),
    ("folder-not-file", _folder_named),
    ("missing", _missing),
    ("broken-symlink", _broken_link),
    ("symlink-loop", _link_loop),
]

# Label arrays: dtypes, values and shapes (name → array).
LABEL_DATA: list[tuple[str, Callable[[], np.ndarray]]] = [
    ("float32-integral", lambda: _labels().astype(np.float32)),
    ("float32-half", lambda: _labels().astype(np.float32) + 0.5),
    ("float64-nan", lambda: np.where(_labels() > 0, np.nan, 0.0)),
    ("float32-inf", lambda: np.where(_labels() > 0, np.inf, 0).astype(np.float32)),
    ("float32-neg-zero", lambda: np.where(_labels() > 0, _labels(), -0.0).astype(np.float32)),
    ("float64-1e300", lambda: np.where(_labels() > 0, 1e300, 0.0)),
    ("complex64", lambda: _labels().astype(np.complex64)),
    ("int64-valid", lambda: _labels().astype(np.int64)),
    ("int64-huge", lambda: np.where(_labels() > 0, 2**62, 0).astype(np.int64)),
    ("int8-negative", lambda: -_labels().astype(np.int8)),
    ("uint16-300", lambda: np.where(_labels() > 0, 300, 0).astype(np.uint16)),
    ("int32-minus-one", lambda: np.where(_labels() > 0, -1, 0).astype(np.int32)),
    ("rgb24", lambda: _rgb(_labels())),
    ("ids-outside-vocabulary", lambda: np.where(_labels() > 0, 200, 0).astype(np.uint8)),
    ("id-118", lambda: np.where(_labels() == 1, 118, _labels()).astype(np.uint8)),
    ("all-255", lambda: np.full(SHAPE, 255, np.uint8)),
    ("empty", lambda: np.zeros(SHAPE, np.uint8)),
    ("only-background-classes", lambda: np.where(_labels() > 0, 8, 0).astype(np.uint8)),
    ("everything-liver", lambda: np.full(SHAPE, 5, np.uint8)),
    ("random-ids", lambda: _stream("random-ids").integers(0, 8, SHAPE).astype(np.uint8)),
    ("shape-2d", lambda: _labels()[:, :, 4]),
    ("shape-1d", lambda: _labels()[:, 4, 4]),
    ("shape-4d", lambda: np.stack([_labels(), _labels()], -1)),
    ("shape-4d-singleton", lambda: _labels()[..., None]),
    ("shape-5d", lambda: np.stack([_labels()] * 3, -1)[..., None, :]),
    ("shape-1x1x1", lambda: np.full((1, 1, 1), 5, np.uint8)),
    ("shape-slab", lambda: _labels()[4:5]),
    ("shape-needle", lambda: np.full((40, 1, 1), 5, np.uint8)),
]

# Valid headers with absurd or extreme geometry (name → affine).
GEOMETRY: list[tuple[str, np.ndarray]] = [
    ("spacing-0.01", np.diag([0.01, 0.01, 0.01, 1.0])),
    ("spacing-0.009", np.diag([0.009, 10, 10, 1.0])),
    ("spacing-99.9", np.diag([99.9, 99.9, 99.9, 1.0])),
    ("spacing-100.1", np.diag([10, 10, 100.1, 1.0])),
    ("spacing-anisotropic", np.diag([0.01, 0.01, 99.0, 1.0])),
    ("origin-1e9", np.array([[10, 0, 0, 1e9], [0, 10, 0, -1e9], [0, 0, 12, 1e9], [0, 0, 0, 1.0]])),
    ("oblique-45", np.array([[7.07, -7.07, 0, 0], [7.07, 7.07, 0, 0], [0, 0, 12, 0], [0, 0, 0, 1.0]])),
    ("sheared", np.array([[10, 5, 0, 0], [0, 10, 0, 0], [0, 3, 12, 0], [0, 0, 0, 1.0]])),
    ("lps", np.diag([-10.0, -10.0, 12.0, 1.0])),
    ("axes-permuted", np.array([[0, 0, 12, 0], [10, 0, 0, 0], [0, 10, 0, 0], [0, 0, 0, 1.0]])),
]


def label_inputs() -> list[tuple[str, Callable[[Path], Path]]]:
    """Every bad (or odd) label file: name → function(folder) → the file."""
    out: list[tuple[str, Callable[[Path], Path]]] = []
    for name, fn in MUTATIONS:
        out.append((name, lambda folder, fn=fn: _write(folder / "labels.nii.gz", fn(_nii(_labels())))))
    for name, make in RAW_FILES:
        out.append((name, lambda folder, make=make: make(folder, "labels.nii.gz")))
    for name, data in LABEL_DATA:
        out.append((name, lambda folder, data=data: _write(folder / "labels.nii.gz", _nii(data()))))
    for name, affine in GEOMETRY:
        out.append((name, lambda folder, affine=affine: _write(folder / "labels.nii.gz", _nii(_labels(), affine))))
    seg = REAL / "dcmqi-ct-3slice" / "liver-seg.dcm"
    dicom = [
        ("dicom-ct-slice-as-seg", lambda: (REAL / "dcmqi-ct-3slice" / "ct" / "01.dcm").read_bytes()),
        ("dicom-seg-truncated", lambda: seg.read_bytes()[: seg.stat().st_size // 2]),
        ("dicom-seg-flipped", lambda: _flipped(seg.read_bytes(), 40)),
        ("dicom-seg-header-only", lambda: seg.read_bytes()[:132]),
    ]
    for name, content in dicom:
        out.append((name, lambda folder, content=content: _write(folder / "seg.dcm", content(), gz=False)))
    for name, file_name in (
        ("name-unicode", "läbels ✓ 肝.nii.gz"),
        ("name-mathtext", "a$\\frac{1}{$x^$.nii.gz"),
        ("name-newline", "two\nlines.nii.gz"),
        ("name-upper-case", "LABELS.NII.GZ"),
        ("name-wrong-suffix", "labels.nii.gz.bak"),
        ("name-mha", "labels.mha"),
        ("name-dash", "--labels.nii.gz"),
        ("name-dcm-random", "seg.dcm"),
    ):
        content = rng.integers(0, 256, 500, dtype=np.uint8).tobytes() if file_name.endswith(".dcm") else None
        out.append(
            (
                name,
                lambda folder, f=file_name, c=content: _write(
                    folder / f,
                    c if c is not None else _nii(_labels()),
                    gz=False if c is not None else f.lower().endswith(".gz"),
                ),
            )
        )
    return out


def ct_inputs() -> list[tuple[str, Callable[[Path], Path]]]:
    """Bad CT files for `prepare` (a subset of the mutations, and CT-specific values)."""
    keep = (
        "sizeof_hdr=0",
        "magic=b'XXXX'",
        "dim0=100",
        "dim1=-5",
        "huge-1024^3",
        "huge-32767^3",
        "pixdim1=nan",
        "pixdim1=0.0",
        "pixdim1=1e30",
        "qform-quatern_b=nan",
        "sform-row-inf",
        "sform-singular",
        "sform-oblique",
        "datatype=999",
        "datatype=32",
        "datatype=128",
        "vox_offset=1e30",
        "scl_slope=nan",
        "scl_slope=1e30",
        "scl_inter=-inf",
        "header-flip-0",
        "header-flip-1",
        "header-flip-2",
        "body-flip-0",
        "truncate-352",
        "truncate-700",
    )
    out: list[tuple[str, Callable[[Path], Path]]] = []
    for name, fn in MUTATIONS:
        if name in keep:
            out.append((name, lambda folder, fn=fn: _write(folder / "ct.nii.gz", fn(_nii(_ct())))))
    data = [
        ("float32-nan", lambda: np.where(_ct() > 0, np.nan, _ct()).astype(np.float32)),
        ("float64-inf", lambda: np.where(_ct() > 0, -np.inf, _ct())),
        ("float64-1e300", lambda: np.where(_ct() > 0, 1e300, _ct())),
        ("complex64", lambda: _ct().astype(np.complex64)),
        ("rgb24", lambda: _rgb(_ct().clip(0, 255).astype(np.uint8))),
        ("int64-huge", lambda: np.where(_ct() > 0, 2**62, _ct()).astype(np.int64)),
        ("uint8", lambda: _ct().clip(0, 255).astype(np.uint8)),
        ("all-air", lambda: np.full(SHAPE, -1024, np.int16)),
        ("shape-4d", lambda: np.stack([_ct(), _ct()], -1)),
    ]
    for name, make in data:
        out.append((name, lambda folder, make=make: _write(folder / "ct.nii.gz", _nii(make()))))
    for name in ("random-bytes", "gz-truncated-50pc", "empty-file", "folder-not-file", "nifti2-huge-8GB"):
        make = dict(RAW_FILES)[name]
        out.append((name, lambda folder, make=make: make(folder, "ct.nii.gz")))
    return out


# --------------------------------------------------------------------------------------------------
# The cases


@dataclass(frozen=True)
class Case:
    command: str
    name: str
    #: function(tmp folder, model folder) → (argv, output path or None)
    make: Callable[[Path, Path], tuple[list[str], Path | None]]
    huge: bool = False

    @property
    def id(self) -> str:
        return f"{self.command}:{self.name}"


CASES: list[Case] = []
HUGE = ("huge", "nifti2-huge")


def _report_cases() -> None:
    for name, make in label_inputs():
        CASES.append(
            Case(
                "report",
                name,
                lambda tmp, model, make=make: (["report", str(make(tmp / "in")), *VOCAB], None),
                huge=name.startswith(HUGE),
            )
        )
    good = lambda tmp: _write(tmp / "in" / "labels.nii.gz", _nii(_labels()))  # noqa: E731
    options = [
        ("vocabulary-empty", lambda tmp: ["report", str(good(tmp)), "--vocabulary", ""]),
        ("vocabulary-unknown", lambda tmp: ["report", str(good(tmp)), "--vocabulary", "nope"]),
        ("vocabulary-traversal", lambda tmp: ["report", str(good(tmp)), "--vocabulary", "../sources/amos"]),
        ("vocabulary-nul", lambda tmp: ["report", str(good(tmp)), "--vocabulary", "amos\0"]),
        ("vocabulary-10000-chars", lambda tmp: ["report", str(good(tmp)), "--vocabulary", "a" * 10_000]),
        ("vocabulary-upper-case", lambda tmp: ["report", str(good(tmp)), "--vocabulary", "TOTALSEGMENTATOR"]),
        ("vocabulary-emoji", lambda tmp: ["report", str(good(tmp)), "--vocabulary", "🫁"]),
        ("vocabulary-none-guessable", lambda tmp: ["report", str(good(tmp))]),
        (
            "sidecar-not-json",
            lambda tmp: (_file_of(b"{not json")(tmp / "in", "guidegen-source.json"), ["report", str(good(tmp))])[1],
        ),
        (
            "sidecar-a-list",
            lambda tmp: (_file_of(b"[1, 2]")(tmp / "in", "guidegen-source.json"), ["report", str(good(tmp))])[1],
        ),
        (
            "sidecar-vocabulary-number",
            lambda tmp: (
                _file_of(b'{"vocabulary": 5}')(tmp / "in", "guidegen-source.json"),
                ["report", str(good(tmp))],
            )[1],
        ),
        (
            "sidecar-vocabulary-object",
            lambda tmp: (
                _file_of(b'{"vocabulary": {"a": 1}}')(tmp / "in", "guidegen-source.json"),
                ["report", str(good(tmp))],
            )[1],
        ),
        (
            "sidecar-cases-garbage",
            lambda tmp: (
                _file_of(b'{"cases": [1, {"labels": 5}, null]}')(tmp / "in", "guidegen-source.json"),
                ["report", str(good(tmp))],
            )[1],
        ),
        (
            "sidecar-latin1",
            lambda tmp: (
                _file_of('{"vocabulary": "amos", "notes": "é"}'.encode("latin-1"))(tmp / "in", "guidegen-source.json"),
                ["report", str(good(tmp))],
            )[1],
        ),
        ("seed-negative", lambda tmp: ["report", str(good(tmp)), *VOCAB, "--seed", "-1"]),
        ("seed-huge", lambda tmp: ["report", str(good(tmp)), *VOCAB, "--seed", str(10**40)]),
        ("seed-not-a-number", lambda tmp: ["report", str(good(tmp)), *VOCAB, "--seed", "1e3"]),
        (
            "out-existing-folder",
            lambda tmp: (tmp.joinpath("o").mkdir(), ["report", str(good(tmp)), *VOCAB, "--out", str(tmp / "o")])[1],
        ),
        (
            "out-folder-overwrite",
            lambda tmp: (
                tmp.joinpath("o").mkdir(),
                ["report", str(good(tmp)), *VOCAB, "--out", str(tmp / "o"), "--overwrite"],
            )[1],
        ),
        (
            "out-under-a-file",
            lambda tmp: (
                tmp.joinpath("f").write_text("x"),
                ["report", str(good(tmp)), *VOCAB, "--out", str(tmp / "f" / "r.txt")],
            )[1],
        ),
        (
            "out-odd-name",
            lambda tmp: ["report", str(good(tmp)), *VOCAB, "--json", "--out", str(tmp / "o" / "rép ✓ $x$.txt")],
        ),
    ]
    for name, make in options:
        CASES.append(Case("report", name, lambda tmp, model, make=make: (make(tmp), None)))


def _generate_ct_cases() -> None:
    for name, make in label_inputs():

        def build(tmp, model, make=make):
            out = tmp / "out"
            return [
                "generate-ct",
                "--labels",
                str(make(tmp / "in")),
                *VOCAB,
                "--out",
                str(out),
                "--model",
                str(model),
                *FAST_CT,
            ], out

        CASES.append(Case("generate-ct", name, build, huge=name.startswith(HUGE)))
    options = [
        ("phase-unknown", ["--phase", "venous-ish"]),
        ("phase-empty", ["--phase", ""]),
        ("prompt-empty", ["--prompt", ""]),
        ("prompt-10000", ["--prompt", ("liver tumour " * 770)[:10_000]]),
        ("prompt-zero-width", ["--prompt", "\u200b\u200d\ufeff"]),
        ("prompt-rtl", ["--prompt", "\u202eromut revil mc 4"]),
        ("prompt-mathtext", ["--prompt", "$\\frac{1}{$ liver"]),
        ("prompt-nul", ["--prompt", "liver\0tumour"]),
        ("steps-zero", ["--steps", "0"]),
        ("steps-negative", ["--steps", "-3"]),
        ("steps-huge", ["--steps", "10000000000"]),
        ("guidance-nan", ["--guidance", "nan"]),
        ("guidance-inf", ["--guidance", "inf"]),
        ("guidance-negative", ["--guidance", "-1"]),
        ("guidance-1e308", ["--guidance", "1e308"]),
        ("seed-negative", ["--seed", "-1"]),
        ("seed-huge", ["--seed", str(2**64)]),
        ("device-tpu", ["--device", "tpu"]),
    ]
    for name, extra in options:

        def build(tmp, model, extra=extra):
            out = tmp / "out"
            labels = _write(tmp / "in" / "labels.nii.gz", _nii(_labels()))
            return [
                "generate-ct",
                "--labels",
                str(labels),
                *VOCAB,
                "--out",
                str(out),
                "--model",
                str(model),
                *FAST_CT,
                *extra,
            ], out

        CASES.append(Case("generate-ct", name, build))
    models = [
        ("model-missing", lambda tmp, model: tmp / "nope"),
        ("model-a-file", lambda tmp, model: _file_of(b"x")(tmp, "model.bin")),
        ("model-empty-folder", lambda tmp, model: _folder_named(tmp, "empty-model")),
        ("model-corrupt-weights", lambda tmp, model: _corrupt_model(tmp, model, "model.safetensors")),
        ("model-corrupt-config", lambda tmp, model: _corrupt_model(tmp, model, "config.json")),
    ]
    for name, make_model in models:

        def build(tmp, model, make_model=make_model):
            out = tmp / "out"
            labels = _write(tmp / "in" / "labels.nii.gz", _nii(_labels()))
            return [
                "generate-ct",
                "--labels",
                str(labels),
                *VOCAB,
                "--out",
                str(out),
                "--model",
                str(make_model(tmp, model)),
                *FAST_CT,
            ], out

        CASES.append(Case("generate-ct", name, build))


def _corrupt_model(tmp: Path, model: Path, file_name: str) -> Path:
    import shutil

    copy = tmp / "model"
    shutil.copytree(model, copy)
    target = copy / "image_generator" / file_name
    data = bytearray(target.read_bytes())
    data[len(data) // 2 : len(data) // 2 + 16] = b"\xff" * 16
    target.write_bytes(bytes(data))
    return copy


#: Prompts: odd Unicode, control characters, 10 000 characters, punctuation, odd numbers.
PROMPTS: list[tuple[str, str]] = [
    ("empty", ""),
    ("spaces", "   \t  "),
    ("nul", "\0"),
    ("nul-inside", "4 cm liver\0tumour"),
    ("zero-width-only", "\u200b\u200c\u200d\ufeff"),
    ("rtl-marks-only", "\u200f\u200e\u202b\u202c"),
    ("rtl-override", "\u202e4 cm liver tumour\u202c"),
    ("combining", "l\u0301i\u0302v\u0303e\u0304r t\u0308umour"),
    ("zalgo", "s" + "\u0336\u0337\u0338" * 60 + "pleen enlarged"),
    ("emoji", "🫁🩻 4 cm liver tumour 🧬👨‍👩‍👧"),
    ("surrogate-escaped", "liver \udcff\udcfe tumour"),
    ("lone-high-surrogate", "\ud83d spleen"),
    ("ansi-escapes", "\x1b[31m3 cm\x1b[0m pancreatic mass"),
    ("control-only", "\r\n\v\f\x07\x08"),
    ("private-use", "\ue000\uf8ff kidney"),
    ("noncharacters", "\ufffe\uffff\U0010ffff liver"),
    ("10000-a", "a" * 10_000),
    ("10000-prompt", ("4 cm liver tumour, " * 600)[:10_000]),
    ("10000-emoji", "🧬" * 10_000),
    ("2000-words", ("spleen enlarged " * 200)[:2000]),
    ("2001-chars", "x" * 2001),
    ("punctuation", "!!!???...,,,;;;:::---((()))"),
    ("1e308-cm", "1e308 cm tumour"),
    ("minus-5-cm", "=-5 cm liver tumour"),
    ("zero-cm", "0 cm liver tumour"),
    ("zero-mm-times", "0 x 0 x 0 mm pancreatic mass"),
    ("9999-cm", "9999 cm liver tumour"),
    ("huge-age", "99999999999999999999 year old man"),
    ("age-minus", "-40 year old woman"),
    ("zero-ml", "0 ml liver, spleen 1,000,000 ml"),
    ("nan-inf", "nan cm tumour, inf mm mass"),
    ("mathtext", "$\\frac{1}{0}$ liver tumour $x^$"),
    ("dollars", "$$ $ $$$ spleen"),
    ("format-strings", "%s %d {0} {prompt} {{}}"),
    ("html", "<script>alert(1)</script> kidney"),
    ("sql", "'; DROP TABLE cases; -- liver"),
    ("fullwidth-digits", "４ｃｍ liver tumour"),
    ("arabic-digits", "٤ cm liver tumour"),
    ("cjk", "肝脏肿瘤 4 cm"),
    ("arabic-rtl", "ورم الكبد 4 cm"),
    ("turkish-i", "İLEUM ıleum LİVER"),
    ("ligatures", "ﬁve cm ﬂank mass"),
    ("one-long-word", "x" * 1999),
    ("many-numbers", " ".join(str(i) for i in range(400))[:2000]),
    ("four-dimensions", "4 x 4 x 4 x 4 cm liver mass"),
    ("negations", "no no no no no tumour"),
    ("newlines", "liver tumour\nspleen enlarged\r\nsmall kidney"),
    ("dash-start", "-5 cm liver tumour"),
]


def _accepted(prompt: str) -> bool:
    from guidegen.errors import InputError
    from guidegen.settings import check_prompt

    try:
        check_prompt(prompt)
    except InputError:
        return False
    return True


def _generate_cases() -> None:
    for name, prompt in PROMPTS:

        def build(tmp, model, prompt=prompt):
            out = tmp / "out"
            return ["generate", "--prompt", prompt, "--out", str(out), "--model", str(model), *FAST_GEN], out

        CASES.append(Case("generate", f"prompt-{name}", build))
    odd = "\n".join(
        p
        for _, p in PROMPTS
        if _accepted(p)
        and len(p.splitlines()) == 1
        and "\0" not in p
        and not any(0xD800 <= ord(c) <= 0xDFFF for c in p)
    )  # every valid prompt that UTF-8 can hold
    files = [
        ("prompts-file-odd-unicode-batch", "p.txt", odd.encode()),
        ("prompts-file-utf8-surrogates", "p.txt", "liver tumour\n\ud800 spleen\n".encode("utf-8", "surrogatepass")),
        ("prompts-file-bom", "p.txt", "\ufeff4 cm liver tumour\n".encode()),
        ("prompts-file-utf16", "p.txt", "4 cm liver tumour\n".encode("utf-16")),
        ("prompts-file-latin1", "p.txt", "tumeur du foie é\n".encode("latin-1")),
        ("prompts-file-nul", "p.txt", b"liver\0tumour\n"),
        ("prompts-file-empty", "p.txt", b""),
        ("prompts-file-comments-only", "p.txt", b"# nothing\n   \n#\n"),
        ("prompts-file-10000-line", "p.txt", ("a" * 10_000).encode()),
        ("prompts-file-random-bytes", "p.txt", rng.integers(0, 256, 3000, dtype=np.uint8).tobytes()),
        ("csv-no-prompt-column", "p.csv", b"text,count\nliver,1\n"),
        ("csv-count-1e3", "p.csv", b"prompt,count\nliver tumour,1e3\n"),
        ("csv-count-negative", "p.csv", b"prompt,count\nliver tumour,-1\n"),
        ("csv-count-zero", "p.csv", b"prompt,count\nliver tumour,0\n"),
        ("csv-count-huge", "p.csv", f"prompt,count\nliver tumour,{10**30}\n".encode()),
        ("csv-count-nan", "p.csv", b"prompt,count\nliver tumour,nan\n"),
        ("csv-header-only", "p.csv", b"prompt,count\n"),
        ("csv-empty-prompt", "p.csv", b"prompt,count\n,2\n"),
        ("csv-ragged", "p.csv", b"prompt,count\nliver,1,extra,columns\nspleen\n"),
        ("csv-quoted-multiline", "p.csv", b'prompt,count\n"liver\ntumour, 4 cm",1\n'),
        ("csv-unclosed-quote", "p.csv", b'prompt,count\n"liver tumour,1\n'),
        ("csv-duplicate-header", "p.csv", b"prompt,prompt,count\nliver,spleen,1\n"),
    ]
    for name, file_name, content in files:

        def build(tmp, model, file_name=file_name, content=content):
            out = tmp / "out"
            path = _write(tmp / file_name, content, gz=False)
            return [
                "generate",
                "--prompts",
                str(path),
                "--out",
                str(out),
                "--model",
                str(model),
                "--batch-size",
                "64",
                *FAST_GEN,
            ], out

        CASES.append(Case("generate", name, build))
    options = [
        ("prompts-file-is-folder", lambda tmp, model: ["--prompts", str(_folder_named(tmp, "prompts.txt"))]),
        ("prompts-file-missing", lambda tmp, model: ["--prompts", str(tmp / "missing.txt")]),
        ("n-zero", lambda tmp, model: ["--prompt", "liver", "-n", "0"]),
        ("n-huge", lambda tmp, model: ["--prompt", "liver", "-n", str(10**12)]),
        ("seed-negative", lambda tmp, model: ["--prompt", "liver", "--seed", "-7"]),
        ("seed-huge", lambda tmp, model: ["--prompt", "liver", "--seed", str(2**70)]),
        ("batch-size-zero", lambda tmp, model: ["--prompt", "liver", "--batch-size", "0"]),
        ("guidance-nan", lambda tmp, model: ["--prompt", "liver", "--guidance", "nan"]),
        ("image-guidance-inf", lambda tmp, model: ["--prompt", "liver", "--image-guidance", "inf"]),
        ("steps-negative", lambda tmp, model: ["--prompt", "liver", "--steps", "-1"]),
        ("image-steps-huge", lambda tmp, model: ["--prompt", "liver", "--image-steps", str(10**9)]),
        ("phase-empty", lambda tmp, model: ["--prompt", "liver", "--phase", ""]),
        ("format-upper-case", lambda tmp, model: ["--prompt", "liver", "--format", "NIFTI"]),
        (
            "dataset-name-traversal",
            lambda tmp, model: ["--prompt", "liver", "--format", "nnunet", "--dataset-name", "../../evil"],
        ),
        ("dataset-name-empty", lambda tmp, model: ["--prompt", "liver", "--format", "nnunet", "--dataset-name", ""]),
        ("threads-zero", lambda tmp, model: ["--prompt", "liver", "--threads", "0"]),
        ("threads-negative", lambda tmp, model: ["--prompt", "liver", "--threads", "-4"]),
        ("device-empty", lambda tmp, model: ["--prompt", "liver", "--device", ""]),
        ("out-is-a-file", lambda tmp, model: ["--prompt", "liver", "--out", str(_file_of(b"x")(tmp, "out-file"))]),
        ("out-under-a-file", lambda tmp, model: ["--prompt", "liver", "--out", str(_file_of(b"x")(tmp, "f") / "o")]),
        ("model-missing", lambda tmp, model: ["--prompt", "liver", "--model", str(tmp / "nope")]),
        (
            "model-json-garbage",
            lambda tmp, model: [
                "--prompt",
                "liver",
                "--model",
                str(_model_with_info(tmp, model, b"\xff\xfe not json")),
            ],
        ),
        (
            "model-json-a-list",
            lambda tmp, model: ["--prompt", "liver", "--model", str(_model_with_info(tmp, model, b"[1, 2]"))],
        ),
        (
            "dicom-emoji-prompt",
            lambda tmp, model: ["--prompt", "🫁 4 cm liver tumour 👨‍👩‍👧 \u202e", "--format", "dicom"],
        ),
        (
            "dicom-cjk-rtl-prompt",
            lambda tmp, model: ["--prompt", "肝脏肿瘤 ورم الكبد \\ ^ = 4 cm", "--format", "dicom"],
        ),
        ("nnunet-odd-prompt", lambda tmp, model: ["--prompt", "$x^$ \u0301\u0301 spleen ﬁ", "--format", "nnunet"]),
    ]
    for name, make in options:

        def build(tmp, model, make=make):
            out = tmp / "out"
            args = make(tmp, model)
            defaults = {"--out": str(out), "--model": str(model), **dict(zip(FAST_GEN[:-1:2], FAST_GEN[1::2]))}
            extra = [x for k, v in defaults.items() if k not in args for x in (k, v)]
            target = Path(args[args.index("--out") + 1]) if "--out" in args else out
            return ["generate", *args, *extra, "-q"], target

        CASES.append(Case("generate", name, build))


def _model_with_info(tmp: Path, model: Path, info: bytes) -> Path:
    import shutil

    copy = tmp / "model"
    shutil.copytree(model, copy)
    (copy / "model.json").write_bytes(info)
    return copy


def _pair(
    tmp: Path,
    ct: Callable[[Path], Path] | None = None,
    labels: Callable[[Path], Path] | None = None,
    sidecar: bytes | None = b'{"vocabulary": "totalsegmentator"}',
) -> Path:
    case = tmp / "src" / "case"
    (ct or (lambda f: _write(f / "ct.nii.gz", _nii(_ct()))))(case)
    (labels or (lambda f: _write(f / "labels.nii.gz", _nii(_labels()))))(case)
    if sidecar is not None:
        _write(case / "guidegen-source.json", sidecar, gz=False)
    return tmp / "src"


def _prepare_cases() -> None:
    def add(name, make_src, extra=()):
        def build(tmp, model, make_src=make_src, extra=extra):
            out = tmp / "out"
            return ["prepare", str(make_src(tmp)), "--out", str(out), *PREPARE_OPTS, *extra], out

        CASES.append(Case("prepare", name, build, huge=HUGE[0] in name))

    for name, make in ct_inputs():
        add(f"ct-{name}", lambda tmp, make=make: _pair(tmp, ct=make))
    keep = {
        "magic=b'n+2\\x00'",
        "dim0=8",
        "pixdim1=inf",
        "sform-row-nan",
        "datatype=2304",
        "scl_slope=0.5",
        "header-flip-3",
        "header-flip-4",
        "body-flip-1",
        "body-flip-2",
        "truncate-347",
        "huge-1024x1024x512",
        "plain-nii-named-gz",
        "gz-truncated-95pc",
        "float32-half",
        "complex64",
        "int64-valid",
        "int8-negative",
        "ids-outside-vocabulary",
        "empty",
        "shape-2d",
        "shape-4d",
        "spacing-0.01",
        "spacing-100.1",
        "oblique-45",
        "lps",
        "axes-permuted",
        "origin-1e9",
        "everything-liver",
        "shape-1x1x1",
    }
    for name, make in label_inputs():
        if name in keep:
            add(f"labels-{name}", lambda tmp, make=make: _pair(tmp, labels=make))
    # Labels on another grid than the CT; a case with labels only; no sidecar.
    add(
        "labels-other-grid",
        lambda tmp: _pair(tmp, labels=lambda f: _write(f / "labels.nii.gz", _nii(_labels()[:, :, :8]))),
    )
    add(
        "labels-shifted-affine",
        lambda tmp: _pair(tmp, labels=lambda f: _write(f / "labels.nii.gz", _nii(_labels(), AFFINE + np.eye(4) * 0.5))),
    )
    add("no-sidecar", lambda tmp: _pair(tmp, sidecar=None))
    sidecars = [
        ("not-json", b"{oops"),
        ("a-list", b"[]"),
        ("vocabulary-number", b'{"vocabulary": 7}'),
        ("vocabulary-unknown", b'{"vocabulary": "nope"}'),
        ("vocabulary-object", b'{"vocabulary": {"a": [1]}}'),
        ("cases-vocabulary-list", b'{"cases": [{"labels": "labels.nii.gz", "vocabulary": ["amos"]}]}'),
        ("vocabulary-nul", b'{"vocabulary": "amos\\u0000"}'),
        ("cases-not-a-list", b'{"cases": 5}'),
        ("cases-numbers", b'{"cases": [1, 2]}'),
        ("cases-number-paths", b'{"cases": [{"labels": 5, "image": 6}]}'),
        ("cases-id-number", b'{"cases": [{"id": 5, "labels": "labels.nii.gz"}], "vocabulary": "totalsegmentator"}'),
        ("cases-missing-file", b'{"cases": [{"labels": "nope.nii.gz"}]}'),
        ("cases-absolute-path", b'{"cases": [{"labels": "/etc/passwd"}], "vocabulary": "totalsegmentator"}'),
        ("cases-traversal", b'{"cases": [{"labels": "../../../etc/hostname"}], "vocabulary": "amos"}'),
        (
            "cases-duplicate-ids",
            b'{"cases": [{"id": "a", "labels": "labels.nii.gz"}, {"id": "a", "labels": "labels.nii.gz"}], '
            b'"vocabulary": "totalsegmentator"}',
        ),
        (
            "cases-odd-id",
            (
                '{"cases": [{"id": "../..\\u202e\\u0000\\ud800", "labels": "labels.nii.gz"}], '
                '"vocabulary": "totalsegmentator"}'
            ).encode(),
        ),
        ("utf16", '{"vocabulary": "totalsegmentator"}'.encode("utf-16")),
        ("huge-number", b'{"vocabulary": 1e999}'),
    ]
    for name, content in sidecars:
        add(f"sidecar-{name}", lambda tmp, content=content: _pair(tmp, sidecar=content))
    datasets = [
        ("labels-empty", b'{"labels": {}}'),
        ("labels-regions", b'{"labels": {"background": 0, "liver": [1, 2]}}'),
        ("labels-strings", b'{"labels": {"background": "0", "liver": "x"}}'),
        ("labels-negative", b'{"labels": {"-1": "liver", "0": "background"}}'),
        ("labels-a-list", b'{"labels": [1, 2]}'),
        ("file-ending-odd", b'{"labels": {"0": "background", "1": "liver"}, "file_ending": 5}'),
        ("not-json", b"\x00\x01"),
        ("valid-no-labelsTr", b'{"labels": {"0": "background", "1": "liver"}}'),
    ]
    for name, content in datasets:

        def make_dataset(tmp, content=content, name=name):
            root = tmp / "src" / "Dataset001"
            _write(root / "dataset.json", content, gz=False)
            if name != "valid-no-labelsTr":
                _write(root / "imagesTr" / "case_0000.nii.gz", _nii(_ct()))
                _write(root / "labelsTr" / "case.nii.gz", _nii(np.where(_labels() > 0, 1, 0).astype(np.uint8)))
            return root

        add(f"dataset-json-{name}", make_dataset)
    structures = [
        ("empty", lambda f: _folder_named(f, "segmentations")),
        ("garbage-mask", lambda f: _write(f / "segmentations" / "liver.nii.gz", b"garbage", gz=False)),
        (
            "unknown-structure",
            lambda f: _write(f / "segmentations" / "heart-of-gold.nii.gz", _nii((_labels() > 0).astype(np.uint8))),
        ),
        ("mask-nan", lambda f: _write(f / "segmentations" / "liver.nii.gz", _nii(np.full(SHAPE, np.nan, np.float32)))),
        (
            "masks-two-grids",
            lambda f: (
                _write(f / "segmentations" / "liver.nii.gz", _nii((_labels() == 5).astype(np.uint8))),
                _write(f / "segmentations" / "spleen.nii.gz", _nii((_labels() == 1).astype(np.uint8)[:, :, :5])),
            )[0],
        ),
    ]
    for name, make in structures:

        def make_structures(tmp, make=make):
            case = tmp / "src" / "s0001"
            _write(case / "ct.nii.gz", _nii(_ct()))
            make(case)
            return case

        add(f"structures-{name}", make_structures)
    dicom = [
        (
            "random-bytes",
            lambda f: _write(
                f / "ct" / "IM1.dcm", _stream("dicom").integers(0, 256, 800, dtype=np.uint8).tobytes(), gz=False
            ),
        ),
        ("empty-files", lambda f: [_write(f / "ct" / f"IM{i}.dcm", b"", gz=False) for i in range(3)]),
        ("dicm-magic-only", lambda f: _write(f / "ct" / "IM1", bytes(128) + b"DICM" + bytes(20), gz=False)),
        (
            "seg-random-bytes",
            lambda f: (_write(f / "ct.nii.gz", _nii(_ct())), _write(f / "seg.dcm", b"\0" * 300, gz=False)),
        ),
    ]
    for name, make in dicom:

        def make_dicom(tmp, make=make):
            case = tmp / "src" / "d0001"
            make(case)
            return case

        add(f"dicom-{name}", make_dicom)
    # Options and source paths.
    for name, extra in (
        ("spacing-nan", ["--spacing", "nan"]),
        ("spacing-inf", ["--spacing", "inf"]),
        ("spacing-negative", ["--spacing", "-3"]),
        ("spacing-1e308", ["--spacing", "1e308"]),
        ("spacing-text", ["--spacing", "three"]),
        ("spacing-four", ["--spacing", "1,2,3,4"]),
        ("spacing-empty", ["--spacing", ""]),
        ("size-text", ["--size", "abc"]),
        ("size-nan", ["--size", "nan"]),
        ("size-inf", ["--size", "inf"]),
        ("size-zero", ["--size", "0"]),
        ("size-huge", ["--size", "1e12"]),
        ("size-three", ["--size", "16,16,16"]),
        ("size-empty", ["--size", ""]),
        ("vocabulary-unknown", ["--vocabulary", "nope"]),
        ("vocabulary-nul", ["--vocabulary", "a\0b"]),
        ("vocabulary-long", ["--vocabulary", "v" * 10_000]),
    ):
        add(f"option-{name}", lambda tmp: _pair(tmp), extra)
    add("source-missing", lambda tmp: tmp / "nowhere")
    add("source-a-file", lambda tmp: _write(tmp / "ct.nii.gz", _nii(_ct())))
    add("source-empty-folder", lambda tmp: _folder_named(tmp, "src"))
    add("source-deep-nesting", lambda tmp: _pair(tmp / "a" / "b" / "c" / "d" / "e"))

    def out_is_file(tmp, model):
        return ["prepare", str(_pair(tmp)), "--out", str(_file_of(b"x")(tmp, "out")), *PREPARE_OPTS], None

    CASES.append(Case("prepare", "out-is-a-file", out_is_file))


_report_cases()
_generate_ct_cases()
_generate_cases()
_prepare_cases()


# --------------------------------------------------------------------------------------------------
# Running one case


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no ``except Exception`` swallows it."""


def _on_alarm(signum, frame):
    raise Hang(f"no result after {HANG_S} s")


class _ToStderr(logging.Handler):
    """Writes to whatever ``sys.stderr`` is now (pytest's capture), as a real process's stderr would."""

    def emit(self, record):
        sys.stderr.write(self.format(record) + "\n")


def _show_warning(message, category, filename, lineno, file=None, line=None):
    sys.stderr.write(warnings.formatwarning(message, category, filename, lineno, line))


def _leftovers(root: Path) -> list[Path]:
    """Temporaries that an interrupted or failed write would leave behind."""
    return [p for p in root.rglob("*") if p.name.startswith(".") and (".tmp" in p.name or p.name.endswith(".old"))]


def _same_grid(a: Path, b: Path) -> None:
    ia, ib = nib.load(str(a)), nib.load(str(b))
    assert ia.shape == ib.shape and np.allclose(ia.affine, ib.affine, atol=1e-4), (a, b)
    for image in (ia, ib):
        data = np.asanyarray(image.dataobj)
        assert data.shape == image.shape and np.all(np.isfinite(data))


def _check_result(command: str, argv: list[str], out: Path | None, stdout: str) -> None:
    """A run that exited 0 left complete, readable outputs."""
    if command == "report":
        if "--out" in argv:
            target = Path(argv[argv.index("--out") + 1])
            assert target.is_file() and target.read_text(encoding="utf-8").strip()
        else:
            assert "FINDINGS" in stdout or "IMPRESSION" in stdout, stdout
    elif command == "generate-ct":
        for name in ("ct.nii.gz", "labels.nii.gz", "preview.png", "case.json"):
            assert (out / name).is_file(), name
        _same_grid(out / "ct.nii.gz", out / "labels.nii.gz")
        assert nib.load(str(out / "ct.nii.gz")).get_data_dtype() == np.int16
    elif command == "generate":
        manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
        assert manifest["complete"] and manifest["finished"] == manifest["requested"] >= 1
        for row in manifest["cases"]:
            folder = out / row["folder"]
            for name in ("ct.nii.gz", "labels.nii.gz", "case.json", "report.txt", "preview.png"):
                assert (folder / name).is_file(), (folder, name)
            _same_grid(folder / "ct.nii.gz", folder / "labels.nii.gz")
    elif command == "prepare":
        _check_prepared(out, failed_ok=False)


def _check_prepared(out: Path, failed_ok: bool) -> list[dict]:
    manifest = json.loads((out / "manifest.json").read_text(encoding="utf-8"))
    assert failed_ok or not manifest["failed"]
    folders = {p.name for p in (out / "cases").iterdir()}
    assert folders == {c["case_id"] for c in manifest["cases"]}, (folders, manifest)
    for entry in manifest["cases"]:
        folder = out / "cases" / entry["case_id"]
        assert (folder / "case.json").is_file()
        if entry["has_ct"]:
            _same_grid(folder / "ct.nii.gz", folder / "labels.nii.gz")
        else:
            nib.load(str(folder / "labels.nii.gz")).get_fdata()
    return manifest["failed"]


def _classify(
    case: Case, code: int, stdout: str, err: str, argv: list[str], out: Path | None, tmp: Path, existed: bool
) -> str:
    assert "Traceback" not in err and "internal error" not in err, f"{case.id} crashed:\n{err}"
    assert not _leftovers(tmp), f"{case.id} left temporaries: {_leftovers(tmp)}"
    if code == 0:
        assert not err.strip(), f"{case.id}: succeeded but wrote to stderr:\n{err}"
        _check_result(case.command, argv, out, stdout)
        return "result"
    if code == 2 and err.lstrip().startswith("error: "):
        _one_line_error(err)
        if out is not None and out.exists() and not existed:
            # `generate` records the request (run.json) before generating, so that a rerun resumes;
            # nothing else may be there.
            leftover = sorted(p.name for p in out.iterdir())
            assert case.command == "generate" and leftover == ["run.json"], f"{case.id}: partial output {leftover}"
        return "error"
    if code == 2 and ("Usage:" in err or "Error" in err):
        # click refused the command line before GuideGen ran (a malformed number, a value below min=…).
        assert out is None or existed or not out.exists()
        return "usage error"
    if code == 1 and case.command == "prepare" and "failed" in stdout:
        lines = [line for line in err.splitlines() if line.strip()]
        assert lines and all(line.startswith("error: ") for line in lines), err
        failed = _check_prepared(out, failed_ok=True)
        assert len(failed) == len(lines) and failed, (failed, lines)
        return "case failed"
    raise AssertionError(f"{case.id}: unexpected exit {code}\nstdout: {stdout}\nstderr: {err}")


@pytest.fixture(scope="module", autouse=True)
def _fast_torch():
    """The tiny random-weight models make denormal floats, which are 20× slower on a CPU: flush them.

    The flag holds for the calling thread only, hence one torch thread (and ``--threads 1``).
    """
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="module", autouse=True)
def _summary():
    yield
    commands = sorted({c for c, _ in OUTCOMES})
    kinds = sorted({k for _, k in OUTCOMES})
    lines = [
        "",
        "fuzzed inputs by command and outcome:",
        f"{'command':14s}" + "".join(f"{k:>14s}" for k in kinds) + f"{'total':>8s}",
    ]
    for command in commands:
        counts = [OUTCOMES[command, k] for k in kinds]
        lines.append(f"{command:14s}" + "".join(f"{n:14d}" for n in counts) + f"{sum(counts):8d}")
    lines.append(
        f"{'all':14s}"
        + "".join(f"{sum(OUTCOMES[c, k] for c in commands):14d}" for k in kinds)
        + f"{sum(OUTCOMES.values()):8d}"
    )
    print("\n".join(lines))


def test_enough_inputs():
    per_command = Counter(c.command for c in CASES)
    assert len(CASES) >= 200 and min(per_command.values()) >= 40, per_command
    assert len({c.id for c in CASES}) == len(CASES), "case names must be unique"


@pytest.mark.parametrize("case", CASES, ids=[c.id for c in CASES])
def test_bad_input_gives_an_error_or_a_result(case, tiny_model, tmp_path, capsys):  # noqa: F811
    argv, out = case.make(tmp_path, tiny_model)
    existed = out is not None and out.exists()
    capsys.readouterr()
    previous = signal.signal(signal.SIGALRM, _on_alarm)
    signal.alarm(HANG_S)
    if case.huge:
        tracemalloc.start()
    # What a user's terminal would show besides our own messages: nibabel's log and Python warnings.
    nib_logger, handlers = nib.imageglobals.logger, list(nib.imageglobals.logger.handlers)
    nib_logger.handlers = [_ToStderr()]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("always")
            warnings.showwarning = _show_warning
            code, stdout, err = run(argv, capsys)
        if case.huge:
            peak = tracemalloc.get_traced_memory()[1]
            assert peak < HUGE_ALLOC_LIMIT, f"{case.id}: allocated {peak / 2**20:.0f} MiB for a tiny file"
    finally:
        nib_logger.handlers = handlers
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
        if case.huge:
            tracemalloc.stop()
    outcome = _classify(case, code, stdout, err, argv, out, tmp_path, existed)
    OUTCOMES[case.command, outcome] += 1
    if os.environ.get("GUIDEGEN_FUZZ_LOG"):  # one line per input, to read what the messages say
        with open(os.environ["GUIDEGEN_FUZZ_LOG"], "a", encoding="utf-8") as log:
            message = " | ".join(line for line in err.splitlines() if line.strip())[:300]
            log.write(f"{case.id!a}\t{outcome}\t{code}\t{message!a}\n")


# --------------------------------------------------------------------------------------------------
# A full disk


def _filling_save(monkeypatch, fail_at: int, code: int = errno.ENOSPC):
    """Make nibabel's save write half a file and then fail with ``code`` on its ``fail_at``-th call."""
    real_save = nib.save
    calls = {"n": 0}

    def save(image, filename, *args, **kwargs):
        calls["n"] += 1
        if calls["n"] == fail_at:
            Path(filename).write_bytes(b"\x1f\x8b" + bytes(100))  # half a file, then the disk is full
            raise OSError(code, os.strerror(code), str(filename))
        return real_save(image, filename, *args, **kwargs)

    monkeypatch.setattr(nib, "save", save)
    return calls


@pytest.mark.parametrize("code", [errno.ENOSPC, errno.EDQUOT], ids=["ENOSPC", "EDQUOT"])
def test_disk_full_during_generate(tiny_model, tmp_path, capsys, monkeypatch, code):  # noqa: F811
    out = tmp_path / "out"
    calls = _filling_save(monkeypatch, fail_at=2, code=code)  # ct.nii.gz written, labels.nii.gz fails
    status, _, err = run(
        [
            "generate",
            "--prompt",
            "4 cm liver tumour",
            "-n",
            "2",
            "--out",
            str(out),
            "--model",
            str(tiny_model),
            *FAST_GEN,
        ],
        capsys,
    )
    assert calls["n"] == 2 and status == 2
    _one_line_error(err, str(out / "case_000000"), "no space left on the device", "nothing was written")
    assert sorted(p.name for p in out.iterdir()) == ["run.json"]  # no case folder, no temporary
    # With space again, the same command completes the run.
    monkeypatch.undo()
    status, stdout, err = run(
        [
            "generate",
            "--prompt",
            "4 cm liver tumour",
            "-n",
            "2",
            "--out",
            str(out),
            "--model",
            str(tiny_model),
            *FAST_GEN,
        ],
        capsys,
    )
    assert status == 0, err
    assert "2 case(s) generated" in stdout


def test_disk_full_during_prepare(tmp_path, capsys, monkeypatch):
    src = tmp_path / "src"
    for name in ("a", "b"):
        _write(src / name / "ct.nii.gz", _nii(_ct()))
        _write(src / name / "labels.nii.gz", _nii(_labels()))
        _write(src / name / "guidegen-source.json", b'{"vocabulary": "totalsegmentator"}', gz=False)
    out = tmp_path / "out"
    calls = _filling_save(monkeypatch, fail_at=3)  # case a written; case b's CT fails
    status, _, err = run(["prepare", str(src), "--out", str(out), *PREPARE_OPTS], capsys)
    assert calls["n"] == 3 and status == 2
    _one_line_error(err, str(out / "cases" / "b"), "no space left on the device")
    assert sorted(p.name for p in (out / "cases").iterdir()) == ["a"] and not _leftovers(tmp_path)
    assert not (out / "manifest.json").exists()
    monkeypatch.undo()
    status, stdout, err = run(["prepare", str(src), "--out", str(out), *PREPARE_OPTS], capsys)
    assert status == 0 and "prepared 1, skipped 1" in stdout, (stdout, err)


def test_disk_full_when_writing_a_report(tmp_path, real, capsys, monkeypatch):
    target = tmp_path / "report.txt"

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    status, _, err = run(["report", str(real / "totalseg-example-a" / "labels.nii.gz"), "--out", str(target)], capsys)
    assert status == 2
    _one_line_error(err, str(target), "no space left on the device")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("where", ["block", "rename"])
def test_atomic_writers_turn_a_full_disk_into_one_clear_error(tmp_path, monkeypatch, where):
    from guidegen.io.atomic import DiskFullError, atomic_dir, atomic_file

    def fail(*args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    old = tmp_path / "kept"
    old.mkdir()
    (old / "a.txt").write_text("old")
    for target, writer, overwrite in (
        (tmp_path / "f.bin", atomic_file, False),
        (tmp_path / "d", atomic_dir, False),
        (old, atomic_dir, True),
    ):
        with pytest.raises(DiskFullError) as info, monkeypatch.context() as m:
            with writer(target, overwrite=overwrite) as tmp:
                if where == "rename":
                    m.setattr(os, "replace", fail) if target != old else m.setattr(
                        os, "replace", _fail_second(os.replace)
                    )
                    (tmp / "x.bin" if writer is atomic_dir else tmp).write_bytes(b"data")
                else:
                    fail()
        assert str(target) in str(info.value) and "nothing was written" in str(info.value)
        assert not _leftovers(tmp_path)
    assert not (tmp_path / "f.bin").exists() and not (tmp_path / "d").exists()
    assert (old / "a.txt").read_text() == "old"  # the old folder is back


def _fail_second(real_replace):
    """os.replace that works once (old folder aside) and then finds the disk full (new folder in)."""
    calls = {"n": 0}

    def replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_replace(src, dst)

    return replace
