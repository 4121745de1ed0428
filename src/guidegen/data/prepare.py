"""`guidegen prepare`: turn public datasets into a cache of preprocessed cases and a manifest.

Every case is read in its own layout (see `guidegen.io.layouts`), its labels are mapped onto the
GuideGen vocabulary with the set of annotated classes, and it is resampled to one grid:

* target spacing (default 3 mm isotropic), shape-based label interpolation, linear CT;
* in-plane crop/pad to a fixed field of view centred on the body (default 128 × 128 voxels =
  384 mm); the full z extent of the scan is kept;
* HU clipped to [-1024, 3071]; scanner padding becomes air;
* the body outline computed from the CT becomes class ``body`` wherever no annotated class is.

Outputs (each case folder is written under a temporary name and renamed when complete, so an
interrupted run leaves nothing half-written, and a rerun skips finished cases)::

    OUT/manifest.json                  settings + one entry per case (+ failures)
    OUT/cases/ID/ct.nii.gz             int16 HU (absent for label-only cases)
    OUT/cases/ID/labels.nii.gz         uint8 GuideGen ids, 255 = unknown (outside the scan)
    OUT/cases/ID/case.json             provenance, annotated classes, volumes, mean HU, contrast phase
"""

from __future__ import annotations

import hashlib
import json
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from guidegen.data.body import body_outline
from guidegen.data.phase import PhaseEstimate, estimate_phase
from guidegen.errors import InputError
from guidegen.grids.geometry import world_extent
from guidegen.grids.resample import grid_affine, resample_ct, resample_labels
from guidegen.io.atomic import DiskFullError, atomic_dir, write_text
from guidegen.io.layouts import SIDECAR, CaseSource, discover_cases
from guidegen.io.nifti import read_nifti, write_nifti
from guidegen.io.validate import check_same_grid
from guidegen.io.volume import HU_MAX, HU_MIN, Volume, canonical
from guidegen.labels.label_set import label_set
from guidegen.labels.remap import combine_structure_masks, load_vocabulary, names_from_ids, remap_labels
from guidegen.labels.vocabulary import ID, NAMES, UNKNOWN

MANIFEST = "manifest.json"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class PrepareConfig:
    """How cases are preprocessed.

    Attributes:
        spacing: target voxel size (x, y, z) in mm.
        size_xy: in-plane size of the field of view in voxels (x, y); ``spacing × size`` mm.
        hu_min, hu_max: CT clip range in HU.
        vocabulary: label vocabulary for plain pairs without a sidecar (``None``: must come from a
            ``guidegen-source.json``, a ``dataset.json`` or a DICOM-SEG's segment names).
    """

    spacing: tuple[float, float, float] = (3.0, 3.0, 3.0)
    size_xy: tuple[int, int] = (128, 128)
    hu_min: float = HU_MIN
    hu_max: float = HU_MAX
    vocabulary: str | None = None

    def __post_init__(self) -> None:
        if len(self.spacing) != 3 or any(not (0.1 <= s <= 20.0) for s in self.spacing):
            raise InputError("--spacing", f"must be three voxel sizes between 0.1 and 20 mm, got {self.spacing}")
        if len(self.size_xy) != 2 or any(not (8 <= s <= 2048) for s in self.size_xy):
            raise InputError("--size", f"must be two sizes between 8 and 2048 voxels, got {self.size_xy}")
        if not self.hu_min < self.hu_max:
            raise InputError("--hu-range", f"needs min < max, got {self.hu_min}, {self.hu_max}")
        if self.vocabulary is not None:
            load_vocabulary(self.vocabulary)

    def digest(self) -> str:
        payload = json.dumps({"v": FORMAT_VERSION, **asdict(self)}, sort_keys=True)
        return hashlib.sha256(payload.encode()).hexdigest()[:16]


@dataclass
class PrepareResult:
    out: Path
    prepared: list[str] = field(default_factory=list)
    skipped: list[str] = field(default_factory=list)
    failed: list[tuple[str, str]] = field(default_factory=list)

    @property
    def manifest(self) -> Path:
        return self.out / MANIFEST


@dataclass
class LoadedCase:
    """A case read from disk, labels in GuideGen ids, before resampling."""

    source: CaseSource
    ct: Volume | None
    labels: Volume | None
    annotated: frozenset[str]
    vocabulary: str


def load_case(source: CaseSource, vocabulary: str | None = None) -> LoadedCase:
    """Read a discovered case and map its labels onto GuideGen ids (no resampling)."""
    ct = None
    if source.image is not None:
        if source.image_format == "dicom":
            from guidegen.io.dicom import read_dicom_series

            ct = read_dicom_series(source.image)
        else:
            ct = read_nifti(source.image, kind="ct")
    labels, annotated, vocab_name = None, frozenset(), "none"
    if source.labels_format == "structures":
        masks = {name: read_nifti(p, kind="labels") for name, p in source.structures.items()}
        ref = next(iter(masks.values()))
        for name, m in masks.items():
            if not m.same_grid(ref, atol=1e-2):
                raise InputError(source.structures[name], "is not on the same grid as the other structure masks")
        array, annotated = combine_structure_masks({n: m.array > 0 for n, m in masks.items()}, ref.affine)
        labels, vocab_name = (
            Volume(array, ref.affine, "labels", {"source": str(source.structures[next(iter(masks))].parent)}),
            "structure files",
        )
    elif source.labels is not None:
        if source.labels_format == "dicom_seg":
            from guidegen.io.dicom_seg import read_dicom_seg

            raw, segment_names = read_dicom_seg(source.labels, reference=ct)
            vocab = names_from_ids(segment_names)
            vocab_name = "DICOM-SEG segment names"
        else:
            raw = read_nifti(source.labels, kind="labels")
            name = vocabulary or source.vocabulary
            if isinstance(name, dict):  # a label set given in the sidecar
                vocab = label_set(name, source.labels.parent / SIDECAR)
                vocab_name = "label set (guidegen-source.json)"
            elif name is not None:
                vocab = load_vocabulary(name)
                vocab_name = name
            elif source.label_names is not None:
                vocab = names_from_ids(source.label_names)
                vocab_name = "dataset.json label names"
            else:
                raise InputError(
                    source.labels,
                    "its label vocabulary is unknown: add a guidegen-source.json "
                    'sidecar ({"vocabulary": "amos"}) or pass --vocabulary',
                )
        array, annotated = remap_labels(raw.array, vocab, path=source.labels, affine=raw.affine)
        labels = raw.with_array(array)
    if ct is not None and labels is not None:
        check_same_grid(
            ct, labels, source.image, source.labels or source.structures.get(next(iter(source.structures), ""), "")
        )
    if ct is None and labels is None:
        raise InputError(source.image or source.labels, "case has neither a CT nor labels")
    return LoadedCase(source, ct, labels, annotated, vocab_name)


def target_grid(case: LoadedCase, config: PrepareConfig) -> tuple[np.ndarray, tuple[int, int, int]]:
    """Axis-aligned RAS+ grid: fixed in-plane FOV centred on the body (or labels), full z extent."""
    ref = case.ct if case.ct is not None else case.labels
    lo, hi = world_extent(ref)
    if case.ct is not None:
        fg = case.ct.array > -500
    else:
        fg = (case.labels.array > 0) & (case.labels.array != UNKNOWN)
    if fg.any():
        idx = np.argwhere(fg)
        w = ref.world_coordinates(np.stack([idx.min(0), idx.max(0)]))
        centre = (w.min(0) + w.max(0)) / 2
    else:
        centre = (lo + hi) / 2
    sx, sy, sz = config.spacing
    nz = max(1, int(np.floor((hi[2] - lo[2]) / sz + 1e-6)))
    shape = (int(config.size_xy[0]), int(config.size_xy[1]), nz)
    origin = np.array(
        [
            centre[0] - (shape[0] - 1) / 2 * sx,
            centre[1] - (shape[1] - 1) / 2 * sy,
            lo[2] + sz / 2 + ((hi[2] - lo[2]) - nz * sz) / 2,
        ]
    )
    return grid_affine((sx, sy, sz), origin), shape


def preprocess(case: LoadedCase, config: PrepareConfig) -> tuple[Volume | None, Volume, frozenset[str], dict]:
    """Resample, clip and add the body outline. Returns (ct, labels, annotated, statistics)."""
    affine, shape = target_grid(case, config)
    ct = None
    if case.ct is not None:
        ct = resample_ct(canonical(case.ct), affine, shape)
        ct.array = np.clip(ct.array, config.hu_min, config.hu_max)
    if case.labels is not None:
        labels = resample_labels(canonical(case.labels), affine, shape)
    else:
        labels = Volume(np.zeros(shape, np.uint8), affine, "labels")
        if ct is None:
            raise InputError(case.source.image, "nothing to prepare")
    annotated = set(case.annotated)
    if ct is not None:
        body = body_outline(ct.array, config.spacing)
        fill = body & (labels.array == 0)
        labels.array[fill] = ID["body"]
        annotated.add("body")
    vox_ml = float(np.prod(config.spacing)) / 1000.0
    counts = np.bincount(labels.array.ravel(), minlength=256)
    stats: dict = {
        "volume_ml": {NAMES[i]: round(float(counts[i]) * vox_ml, 2) for i in range(1, len(NAMES)) if counts[i]},
        "unknown_fraction": round(float(counts[UNKNOWN]) / labels.array.size, 4),
    }
    if ct is not None:
        stats["mean_hu"] = {
            NAMES[i]: round(float(ct.array[labels.array == i].mean()), 1) for i in range(1, len(NAMES)) if counts[i]
        }
    # Contrast phase (guidegen.data.phase): estimated from this case's own mean HU and voxel
    # counts on the prepared grid, so the image generator can be conditioned on it.
    if ct is not None:
        voxels = {NAMES[i]: int(counts[i]) for i in range(1, len(NAMES)) if counts[i]}
        estimate = estimate_phase(stats["mean_hu"], voxels)
    else:
        estimate = PhaseEstimate(None, "low", {"rule": "label-only case"}, fallback="no CT")
    stats["phase"] = estimate.phase
    stats["phase_estimate"] = estimate.to_dict()
    return ct, labels, frozenset(annotated), stats


def _source_fingerprint(source: CaseSource) -> str:
    h = hashlib.sha256()
    for p in source.sources():
        files = sorted(p.rglob("*")) if p.is_dir() else [p]
        for f in files:
            if f.is_file():
                st = f.stat()
                h.update(f"{f}:{st.st_size}:{int(st.st_mtime)}".encode())
    return h.hexdigest()[:16]


def _unique_ids(sources: list[CaseSource]) -> None:
    seen: dict[str, int] = {}
    for s in sources:
        base = s.case_id
        if base in seen:
            parent = (s.image or s.labels or next(iter(s.structures.values()))).parent.parent.name
            s.case_id = f"{parent}-{base}"
        while s.case_id in seen:
            seen[base] += 1
            s.case_id = f"{base}-{seen[base]}"
        seen.setdefault(s.case_id, 0)


def prepare(
    sources: Sequence[str | Path],
    out: str | Path,
    config: PrepareConfig | None = None,
    progress: bool = True,
    overwrite: bool = False,
) -> PrepareResult:
    """Prepare every case found below ``sources`` into ``out`` (see the module docstring).

    Cases already prepared with the same settings from unchanged files are skipped. A case that
    fails is listed in the result and the manifest; the others are still prepared.
    """
    config = config or PrepareConfig()
    out = Path(out)
    if out.exists() and not out.is_dir():
        raise InputError(out, "exists and is not a folder")
    found: list[CaseSource] = []
    for src in sources:
        found.extend(discover_cases(src))
    _unique_ids(found)
    result = PrepareResult(out)
    (out / "cases").mkdir(parents=True, exist_ok=True)
    entries: list[dict] = []
    digest = config.digest()

    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

    with Progress(
        TextColumn("[bold]prepare[/] {task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        disable=not progress,
        transient=False,
    ) as bar:
        task = bar.add_task("", total=len(found))
        for source in found:
            bar.update(task, description=source.case_id)
            case_dir = out / "cases" / source.case_id
            fingerprint = _source_fingerprint(source)
            meta_path = case_dir / "case.json"
            if meta_path.exists() and not overwrite:
                try:
                    old = json.loads(meta_path.read_text())
                except (OSError, json.JSONDecodeError):
                    old = {}
                if old.get("config_digest") == digest and old.get("source_fingerprint") == fingerprint:
                    entries.append(old)
                    result.skipped.append(source.case_id)
                    bar.advance(task)
                    continue
            try:
                started = time.perf_counter()
                loaded = load_case(source, config.vocabulary)
                ct, labels, annotated, stats = preprocess(loaded, config)
                meta = {
                    "case_id": source.case_id,
                    "layout": source.layout,
                    "sources": [str(p) for p in source.sources()[:4]] + (["…"] if len(source.sources()) > 4 else []),
                    "vocabulary": loaded.vocabulary,
                    "annotated": sorted(annotated, key=lambda c: ID[c]),
                    "has_ct": ct is not None,
                    "original": _geometry(loaded.ct if loaded.ct is not None else loaded.labels),
                    "prepared": _geometry(labels),
                    "notes": source.notes,
                    **stats,
                    "config_digest": digest,
                    "source_fingerprint": fingerprint,
                    "seconds": round(time.perf_counter() - started, 2),
                }
                with atomic_dir(case_dir, overwrite=True) as tmp:
                    if ct is not None:
                        write_nifti(ct, tmp / "ct.nii.gz")
                    write_nifti(labels, tmp / "labels.nii.gz")
                    (tmp / "case.json").write_text(json.dumps(meta, indent=1), encoding="utf-8")
                entries.append(meta)
                result.prepared.append(source.case_id)
            except DiskFullError:
                raise  # not this case's fault: every later case and the manifest would fail too
            except InputError as exc:
                result.failed.append((source.case_id, str(exc)))
            bar.advance(task)
    manifest = {
        "format_version": FORMAT_VERSION,
        "config": asdict(config),
        "config_digest": digest,
        "cases": entries,
        "failed": [{"case_id": c, "error": e} for c, e in result.failed],
    }
    write_text(out / MANIFEST, json.dumps(manifest, indent=1), overwrite=True)
    return result


def _geometry(volume: Volume) -> dict:
    return {
        "shape": list(volume.shape),
        "spacing_mm": [round(s, 4) for s in volume.spacing],
        "orientation": volume.meta.get("orientation_on_disk", volume.orientation),
    }


def load_prepared(out: str | Path) -> list[dict]:
    """The manifest's case entries, each with absolute paths to its cached volumes."""
    out = Path(out)
    path = out / MANIFEST
    if not path.exists():
        raise InputError(path, "no manifest: run `guidegen prepare` first")
    manifest = json.loads(path.read_text(encoding="utf-8"))
    for entry in manifest["cases"]:
        folder = out / "cases" / entry["case_id"]
        entry["labels_path"] = str(folder / "labels.nii.gz")
        entry["ct_path"] = str(folder / "ct.nii.gz") if entry["has_ct"] else None
    return manifest["cases"]
