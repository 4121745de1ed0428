"""DICOM CT series (one file per slice) → canonical (RAS+) `Volume`, through pydicom.

A folder may hold several series; `list_dicom_series` says which, `read_dicom_series` reads one.
Slices are ordered by where they lie in space (their position projected on the slice normal), never
by InstanceNumber or file name, and the geometry is checked before any pixel is decoded: same
orientation and matrix in every slice, no duplicate positions, evenly spaced slices.

DICOM patient coordinates are LPS (x towards the patient's left, y posterior, z superior); the
affine is converted to RAS by negating its first two rows, as nibabel and NIfTI expect.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import nibabel as nib
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from guidegen.errors import InputError
from guidegen.io.validate import check_affine, check_ct_values, check_shape
from guidegen.io.volume import Volume, canonical

#: Slices whose positions along the normal differ by less than this (mm) are the same slice.
DUPLICATE_TOL_MM = 1e-3
#: Largest accepted relative deviation of one slice gap from the median gap.
GAP_TOLERANCE = 0.10
#: Direction cosines (unitless) and pixel spacings (relative) that differ less than this agree.
ORIENTATION_TOL = 1e-4
SPACING_RTOL = 1e-4
#: LPS → RAS: negate x and y.
LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])

# Attributes every slice of a volume needs; checked up front so that errors name the attribute.
_GEOMETRY_KEYWORDS = ("ImagePositionPatient", "ImageOrientationPatient", "PixelSpacing", "Rows", "Columns")


@dataclass(frozen=True)
class SeriesInfo:
    """One image series found in a folder.

    Attributes:
        series_uid: SeriesInstanceUID; may be "" in anonymised data, and "" is then what to pass
            to `read_dicom_series` to choose this series.
        description: SeriesDescription ("" when absent).
        modality: Modality, e.g. "CT" ("" when absent).
        n_files: number of files (slices) of the series in the folder.
    """

    series_uid: str
    description: str
    modality: str
    n_files: int

    def summary(self) -> str:
        """Short one-line description used in error messages."""
        description = f'"{self.description}"' if self.description else "no description"
        uid = self.series_uid or '"" (empty SeriesInstanceUID)'
        return f"{uid} ({description}, {self.modality or '?'}, {self.n_files} files)"


@dataclass(frozen=True)
class DicomSlice:
    """Header of one slice file, with the fields the geometry needs as numbers."""

    path: Path
    header: pydicom.Dataset
    position: np.ndarray  # (3,) ImagePositionPatient, LPS mm
    orientation: np.ndarray  # (6,) ImageOrientationPatient: row then column direction cosines
    pixel_spacing: np.ndarray  # (2,) mm: between rows, between columns (DICOM order)
    rows: int
    columns: int


def list_dicom_series(folder: str | Path) -> list[SeriesInfo]:
    """List the image series in a folder (searched recursively), reading headers only.

    Files that are not DICOM are skipped silently, and so are DICOM objects that are not images
    (DICOMDIR, DICOM SEG, structured reports, RT structure sets): a segmentation stored beside its CT
    does not count as a second series.

    Args:
        folder: folder holding the DICOM files.

    Returns:
        One `SeriesInfo` per SeriesInstanceUID, in order of first appearance (files sorted by name).

    Raises:
        InputError: the folder is missing, is a file, holds no DICOM image, or holds a DICOM image
            file that cannot be read (truncated, corrupt).
    """
    return _series_infos(scan_folder(folder))


def read_dicom_series(folder: str | Path, series_uid: str | None = None) -> Volume:
    """Read one DICOM CT series (one file per slice) into a canonical (RAS+) `Volume`.

    The affine is built from the first slice's ImagePositionPatient (after sorting along the slice
    normal), the direction cosines, PixelSpacing and the mean step between consecutive slice
    positions; the spacing between slices therefore comes from the positions, not SliceThickness.
    RescaleSlope/RescaleIntercept are applied per slice.

    Args:
        folder: folder holding the series (searched recursively; other files are ignored).
        series_uid: SeriesInstanceUID to read. Required when the folder holds several series.

    Returns:
        Volume of kind "ct": float32 Hounsfield units, shape (X, Y, Z) after reorientation (before
        it: columns, rows, slices); affine in RAS+ mm; meta {"source", "series_uid", "modality",
        "frame_of_reference_uid"}.

    Raises:
        InputError: no DICOM image; several series and none chosen (the message lists them); the
            chosen series is absent; a single slice; slices that differ in orientation, matrix size
            or pixel spacing; duplicate slice positions; uneven slice gaps (more than 10 % from the
            median, e.g. a missing slice); multi-frame files; unreadable files or pixel data.
    """
    folder = Path(folder)
    groups = scan_folder(folder)
    if series_uid is None:
        if len(groups) > 1:
            listing = "; ".join(info.summary() for info in _series_infos(groups))
            raise InputError(
                folder,
                f"holds {len(groups)} DICOM series, choose one by its SeriesInstanceUID: {listing}",
            )
        series_uid = next(iter(groups))
    elif series_uid not in groups:
        listing = "; ".join(info.summary() for info in _series_infos(groups))
        raise InputError(folder, f"has no DICOM series with SeriesInstanceUID {series_uid}; found: {listing}")

    slices = [slice_geometry(path, header) for path, header in groups[series_uid]]
    if len(slices) < 2:
        raise InputError(
            slices[0].path,
            "is the only slice of its series: a single DICOM slice is not a 3-D volume "
            "(a CT series needs at least 2 slices)",
        )
    slices, step = sort_and_check_geometry(folder, slices)

    first = slices[0]
    check_shape(folder, (first.columns, first.rows, len(slices)))  # refuse huge volumes before decoding
    array = np.empty((first.columns, first.rows, len(slices)), dtype=np.float32)
    for k, item in enumerate(slices):
        # pixel_array is (rows, columns); the Volume's axis 0 runs along a row (the column index).
        array[:, :, k] = _read_hu(item).T

    row_cosines, column_cosines = first.orientation[:3], first.orientation[3:]
    affine_lps = np.eye(4)
    affine_lps[:3, 0] = row_cosines * first.pixel_spacing[1]  # along a row: spacing between columns
    affine_lps[:3, 1] = column_cosines * first.pixel_spacing[0]  # down a column: spacing between rows
    affine_lps[:3, 2] = step
    affine_lps[:3, 3] = first.position
    affine = LPS_TO_RAS @ affine_lps
    check_affine(folder, affine)
    check_ct_values(folder, array)

    header = first.header
    meta: dict[str, Any] = {
        "source": str(folder),
        "series_uid": series_uid,
        "modality": str(header.get("Modality", "") or ""),
        "frame_of_reference_uid": str(header.get("FrameOfReferenceUID", "") or ""),
        # The stored pixel order (columns, rows, slices as sorted) in RAS axis codes, e.g. "LPS".
        "orientation_on_disk": "".join(nib.orientations.aff2axcodes(affine)),
    }
    return canonical(Volume(array=array, affine=affine, kind="ct", meta=meta))


def _series_infos(groups: dict[str, list[tuple[Path, pydicom.Dataset]]]) -> list[SeriesInfo]:
    """`SeriesInfo` of groups already scanned (so a folder is read once)."""
    return [
        SeriesInfo(
            series_uid=uid,
            description=str(headers[0][1].get("SeriesDescription", "") or "").strip(),
            modality=str(headers[0][1].get("Modality", "") or "").strip(),
            n_files=len(headers),
        )
        for uid, headers in groups.items()
    ]


def _iter_files(folder: Path) -> Iterator[Path]:
    # Sorted so that results (and the series order in messages) do not depend on the file system.
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            yield path


def _sop_class(header: pydicom.Dataset) -> UID | None:
    sop = header.get("SOPClassUID")
    file_meta = getattr(header, "file_meta", None)
    if not sop and file_meta is not None:
        sop = file_meta.get("MediaStorageSOPClassUID")  # the dataset may be cut short
    return UID(str(sop)) if sop else None


def _is_image_sop_class(header: pydicom.Dataset) -> bool | None:
    """True/False when the SOP class is known to be an image or not; None when unknown."""
    sop = _sop_class(header)
    if sop is None or sop.name == str(sop):  # absent, or not in pydicom's dictionary (private)
        return None
    return sop.name.endswith("Image Storage")


def scan_folder(folder: str | Path) -> dict[str, list[tuple[Path, pydicom.Dataset]]]:
    """Read every file's header; group DICOM images by SeriesInstanceUID.

    Raises:
        InputError: missing folder, no DICOM image, or a DICOM image file that is cut short.
    """
    folder = Path(folder)
    if not folder.exists():
        raise InputError(folder, "no such folder")
    if not folder.is_dir():
        raise InputError(folder, "is a file, expected a folder of DICOM files")
    groups: dict[str, list[tuple[Path, pydicom.Dataset]]] = {}
    n_files = 0
    for path in _iter_files(folder):
        n_files += 1
        try:
            header = pydicom.dcmread(path, stop_before_pixels=True)
        except InvalidDicomError:
            continue  # not DICOM at all (no 'DICM' prefix): notes, thumbnails, .DS_Store ...
        except Exception as exc:  # pydicom raises many types for damaged files; all mean "unreadable"
            raise InputError(path, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
        is_image = _is_image_sop_class(header)
        has_image_fields = "Rows" in header and "SeriesInstanceUID" in header
        if is_image is False:
            continue  # DICOMDIR, SEG, SR, RTSTRUCT: not slices of a volume
        if not has_image_fields:
            if is_image:
                # pydicom stops quietly at the end of a short file: an image without Rows or
                # SeriesInstanceUID is a file cut short (or badly written), not something to skip.
                sop_name = _sop_class(header).name  # type: ignore[union-attr]  # is_image: not None
                raise InputError(
                    path, f"is a truncated or incomplete DICOM image ({sop_name} without Rows or SeriesInstanceUID)"
                )
            if len(header) == 0:
                raise InputError(path, "is a truncated DICOM file (the header ends before the first data element)")
            continue
        groups.setdefault(str(header.SeriesInstanceUID), []).append((path, header))
    if not groups:
        what = "is empty" if n_files == 0 else f"holds no DICOM image ({n_files} files checked)"
        raise InputError(folder, what)
    return groups


def _numbers(path: Path, header: pydicom.Dataset, keyword: str, count: int) -> np.ndarray:
    value = header.get(keyword)
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"has an unreadable {keyword} ({value!r})") from None
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise InputError(path, f"has an invalid {keyword} ({value!r}), expected {count} numbers")
    return numbers


def slice_geometry(path: Path, header: pydicom.Dataset) -> DicomSlice:
    missing = [keyword for keyword in _GEOMETRY_KEYWORDS if header.get(keyword) in (None, "")]
    if missing:
        raise InputError(path, f"lacks {', '.join(missing)}: not a slice of a 3-D volume (or a damaged file)")
    frames = header.get("NumberOfFrames")
    if frames not in (None, "") and int(frames) > 1:
        raise InputError(
            path, f"is a multi-frame image ({int(frames)} frames); only one-file-per-slice series are supported"
        )
    orientation = _numbers(path, header, "ImageOrientationPatient", 6)
    row_cosines, column_cosines = orientation[:3], orientation[3:]
    if (
        abs(np.linalg.norm(row_cosines) - 1) > 1e-2
        or abs(np.linalg.norm(column_cosines) - 1) > 1e-2
        or abs(float(row_cosines @ column_cosines)) > 1e-2
    ):
        raise InputError(
            path, f"has invalid ImageOrientationPatient {orientation.tolist()} (not two perpendicular unit vectors)"
        )
    spacing = _numbers(path, header, "PixelSpacing", 2)
    if np.any(spacing <= 0):
        raise InputError(path, f"has a non-positive PixelSpacing {spacing.tolist()}")
    return DicomSlice(
        path=path,
        header=header,
        position=_numbers(path, header, "ImagePositionPatient", 3),
        orientation=orientation,
        pixel_spacing=spacing,
        rows=int(header.Rows),
        columns=int(header.Columns),
    )


def sort_and_check_geometry(folder: Path, slices: list[DicomSlice]) -> tuple[list[DicomSlice], np.ndarray]:
    """Sort slices along the normal; check they form one regular grid.

    Returns:
        The sorted slices and the step between consecutive slices (3,), LPS mm.
    """
    first = slices[0]
    for item in slices[1:]:
        if not np.allclose(item.orientation, first.orientation, atol=ORIENTATION_TOL):
            raise InputError(
                item.path,
                f"has ImageOrientationPatient {item.orientation.tolist()} but {first.path.name} has "
                f"{first.orientation.tolist()}: slices of one volume must share their orientation",
            )
        if (item.rows, item.columns) != (first.rows, first.columns):
            raise InputError(
                item.path,
                f"is {item.rows}x{item.columns} pixels but {first.path.name} is {first.rows}x{first.columns}",
            )
        if not np.allclose(item.pixel_spacing, first.pixel_spacing, rtol=SPACING_RTOL, atol=0):
            raise InputError(
                item.path,
                f"has PixelSpacing {item.pixel_spacing.tolist()} mm but {first.path.name} has "
                f"{first.pixel_spacing.tolist()} mm",
            )

    normal = np.cross(first.orientation[:3], first.orientation[3:])
    distances = np.array([item.position @ normal for item in slices])
    order = np.argsort(distances, kind="stable")
    slices = [slices[i] for i in order]
    distances = distances[order]
    gaps = np.diff(distances)

    for k, gap in enumerate(gaps):
        if gap < DUPLICATE_TOL_MM:
            raise InputError(
                slices[k + 1].path,
                f"has the same slice position ({distances[k]:.3f} mm along the slice normal) as "
                f"{slices[k].path.name}: duplicate slice",
            )
    median_gap = float(np.median(gaps))
    for k, gap in enumerate(gaps):
        if abs(gap - median_gap) > GAP_TOLERANCE * median_gap:
            raise InputError(
                folder,
                f"uneven slice spacing: a gap of {gap:.3f} mm between {slices[k].path.name} and "
                f"{slices[k + 1].path.name}, where the median gap is {median_gap:.3f} mm (missing slice?)",
            )

    # The step is the mean displacement between consecutive slices. Along the normal it equals the
    # mean gap; any in-plane part is a gantry tilt, which the (then sheared) affine keeps exactly.
    step = (slices[-1].position - slices[0].position) / (len(slices) - 1)
    expected = slices[0].position + np.arange(len(slices))[:, None] * step
    positions = np.array([item.position for item in slices])
    off_line = np.linalg.norm(positions - expected, axis=1)
    worst = int(np.argmax(off_line))
    if off_line[worst] > GAP_TOLERANCE * median_gap:
        raise InputError(
            slices[worst].path,
            f"lies {off_line[worst]:.3f} mm away from the line through the other slice positions: "
            "the slices do not form one regular volume",
        )
    return slices, step


def _read_hu(item: DicomSlice) -> np.ndarray:
    """Decode one slice and apply its rescale: (rows, columns) float32 Hounsfield units."""
    try:
        dataset = pydicom.dcmread(item.path)
        pixels = dataset.pixel_array
    except Exception as exc:  # decoders and readers raise many types; all mean "pixel data unusable"
        raise InputError(
            item.path, f"has unreadable pixel data, truncated or corrupt? ({exc.__class__.__name__}: {exc})"
        ) from None
    if pixels.shape != (item.rows, item.columns):
        raise InputError(
            item.path,
            f"has pixel data of shape {pixels.shape}, expected one grayscale frame of {item.rows}x{item.columns}",
        )
    slope, intercept = dataset.get("RescaleSlope"), dataset.get("RescaleIntercept")
    try:
        # Absent rescale means stored values are already the output values (slope 1, intercept 0).
        slope = 1.0 if slope in (None, "") else float(slope)
        intercept = 0.0 if intercept in (None, "") else float(intercept)
    except (TypeError, ValueError):
        raise InputError(
            item.path, f"has an unreadable RescaleSlope/RescaleIntercept ({slope!r}, {intercept!r})"
        ) from None
    if not (np.isfinite(slope) and np.isfinite(intercept)) or slope == 0:
        raise InputError(item.path, f"has an invalid RescaleSlope/RescaleIntercept ({slope}, {intercept})")
    return pixels.astype(np.float32) * np.float32(slope) + np.float32(intercept)
