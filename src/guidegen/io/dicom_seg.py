"""DICOM SEG (segmentation objects) → label `Volume`, through highdicom.

A SEG stores one binary (or fractional) frame per segment and slice, each frame placed in space by
its own PlanePositionSequence and the shared PlaneOrientationSequence / PixelMeasuresSequence. We
turn it into one label map whose voxel value is the segment number (0 = background).

Two ways to place it:

* on its own: highdicom stacks the frames into a regular volume, which we convert from LPS to RAS
  and reorient canonically;
* onto a reference CT (`Volume` or DICOM folder): nothing is resampled, each frame is copied into
  the reference slice at its position, and a frame that is not on the reference grid is an error.
  This is how a SEG made on a CT is paired with that CT, voxel for voxel.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
from pydicom.errors import InvalidDicomError
from pydicom.uid import UID

from guidegen.errors import InputError
from guidegen.io.dicom import LPS_TO_RAS, list_dicom_series, read_dicom_series
from guidegen.io.validate import MAX_LABEL_ID, check_affine
from guidegen.io.volume import Volume, canonical

#: SOP classes highdicom reads as segmentations: Segmentation Storage, Label Map Segmentation Storage.
SEG_SOP_CLASSES = ("1.2.840.10008.5.1.4.1.1.66.4", "1.2.840.10008.5.1.4.1.1.66.7")
#: A frame is on the reference grid when its corner pixels land within this many reference voxels of
#: voxel centres (along the slice axis this is the 0.1 × slice spacing tolerance).
GRID_TOLERANCE_VOXELS = 0.1
#: Fractional segments: a pixel belongs to the segment when its fraction is at least this.
FRACTION_THRESHOLD = 0.5


def read_dicom_seg(
    path: str | Path,
    reference: Volume | None = None,
    reference_folder: str | Path | None = None,
) -> tuple[Volume, dict[int, str]]:
    """Read a DICOM SEG file into a label map.

    Segment number k becomes label id k. Where segments overlap, the later segment (the higher
    segment number) wins: a voxel in segments 1 and 3 gets label 3. Fractional segments count a
    pixel as inside when its fraction is at least 0.5.

    Args:
        path: the DICOM SEG file.
        reference: the CT the segmentation was drawn on, as read by `read_dicom_series` (or any
            `Volume`, in any orientation). The result then has exactly its shape and affine. When its meta
            holds "frame_of_reference_uid", it must equal the SEG's FrameOfReferenceUID.
        reference_folder: instead of ``reference``, a DICOM folder to read it from. If the folder
            holds several series, the one the SEG references is chosen.

    Returns:
        ``(labels, segments)``: ``labels`` is a Volume of kind "labels", uint8, shape (X, Y, Z):
        on the reference's grid (shape and affine) when one is given, else on the SEG's own grid,
        LPS→RAS, canonical; meta {"source", "series_uid", "modality", "frame_of_reference_uid",
        "segment_labels"} plus "reference" (its source) when given. ``segments`` maps segment
        number → SegmentLabel (a label-map SEG's background segment 0 is left out).

    Raises:
        InputError: missing or unreadable file; not a SEG; slide (non-patient) coordinates;
            segment numbers above 255; frames that do not form a regular volume (no reference);
            FrameOfReferenceUID different from the reference's; frames off the reference grid or
            outside it.
    """
    path = Path(path)
    if reference is not None and reference_folder is not None:
        raise InputError(path, "give either a reference volume or a reference folder, not both")
    seg = _read_segmentation(path)
    segments = _segment_labels(path, seg)
    if reference_folder is not None:
        reference = _read_reference(seg, Path(reference_folder))

    meta: dict[str, Any] = {
        "source": str(path),
        "series_uid": str(seg.get("SeriesInstanceUID", "") or ""),
        "modality": str(seg.get("Modality", "") or ""),
        "frame_of_reference_uid": str(seg.get("FrameOfReferenceUID", "") or ""),
        "segment_labels": dict(segments),
    }
    if reference is None:
        volume = _seg_on_own_grid(path, seg, sorted(segments))
        volume.meta.update(meta)
        return volume, segments

    array = _seg_on_reference_grid(path, seg, set(segments), reference)
    meta["reference"] = str(reference.meta.get("source", ""))
    return Volume(array=array, affine=reference.affine.copy(), kind="labels", meta=meta), segments


def _read_segmentation(path: Path) -> hd.seg.Segmentation:
    if not path.exists():
        raise InputError(path, "no such file")
    if path.is_dir():
        raise InputError(path, "is a folder, expected a DICOM SEG file")
    try:
        dataset = pydicom.dcmread(path)
    except InvalidDicomError:
        raise InputError(path, "is not a DICOM file") from None
    except Exception as exc:  # pydicom raises many types for damaged files; all mean "unreadable"
        raise InputError(path, f"is not a readable DICOM file ({exc.__class__.__name__}: {exc})") from None
    sop_class = str(dataset.get("SOPClassUID", "") or "")
    if sop_class not in SEG_SOP_CLASSES:
        what = UID(sop_class).name if sop_class else "DICOM object without SOPClassUID"
        raise InputError(path, f"is a {what} (modality {dataset.get('Modality', '?')}), not a DICOM SEG")
    if "PixelData" not in dataset:
        raise InputError(path, "is a DICOM SEG without pixel data (truncated file?)")
    try:
        seg = hd.seg.Segmentation.from_dataset(dataset, copy=False)
    except Exception as exc:  # highdicom validates many attributes; any failure means a damaged SEG
        raise InputError(path, f"is not a valid DICOM SEG ({exc.__class__.__name__}: {exc})") from None
    if seg.coordinate_system != hd.CoordinateSystemNames.PATIENT:
        raise InputError(path, "is not in patient coordinates (slide microscopy SEG?): cannot place it on a CT")
    return seg


def _segment_labels(path: Path, seg: hd.seg.Segmentation) -> dict[int, str]:
    segments: dict[int, str] = {}
    is_labelmap = seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    for description in seg.SegmentSequence:
        number = int(description.SegmentNumber)
        if number == 0 and is_labelmap:
            continue  # a label-map SEG may describe its background as segment 0; it stays label 0
        if not 1 <= number <= MAX_LABEL_ID:
            raise InputError(path, f"has segment number {number}; label ids must be 1-{MAX_LABEL_ID}")
        segments[number] = str(description.get("SegmentLabel", "") or f"segment {number}")
    if not segments:
        raise InputError(path, "has no segments")
    return dict(sorted(segments.items()))


def _read_reference(seg: hd.seg.Segmentation, folder: Path) -> Volume:
    """Read the SEG's CT from a folder, choosing the referenced series if there are several."""
    series_uid = None
    series = list_dicom_series(folder)
    if len(series) > 1:
        referenced = {str(item.get("SeriesInstanceUID", "")) for item in seg.get("ReferencedSeriesSequence", [])}
        matches = [info.series_uid for info in series if info.series_uid in referenced]
        if len(matches) == 1:
            series_uid = matches[0]
        # otherwise read_dicom_series explains that a series must be chosen
    return read_dicom_series(folder, series_uid)


def _inside(values: np.ndarray, seg: hd.seg.Segmentation, rescaled: bool) -> np.ndarray:
    """Boolean membership of one segment's pixels (binary, or fractional thresholded at 0.5)."""
    if seg.segmentation_type == hd.seg.SegmentationTypeValues.FRACTIONAL:
        scale = 1.0 if rescaled else float(seg.MaximumFractionalValue)
        return values >= FRACTION_THRESHOLD * scale
    return values > 0


def _seg_on_own_grid(path: Path, seg: hd.seg.Segmentation, numbers: list[int]) -> Volume:
    """Stack the frames with highdicom's volume API; (slice, row, column) LPS → (X, Y, Z) RAS."""
    try:
        if seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP:
            # Pixel values of a label-map SEG already are segment numbers.
            stacked = seg.get_volume(combine_segments=True, relabel=False, skip_overlap_checks=True)
            labels = np.where(np.isin(stacked.array, numbers), stacked.array, 0).astype(np.uint8)
            geometry = stacked
        else:
            channels = seg.get_volume(segment_numbers=numbers, combine_segments=False, rescale_fractional=True)
            labels = np.zeros(channels.spatial_shape, dtype=np.uint8)
            for j, number in enumerate(numbers):  # ascending, so a later segment overwrites
                labels[_inside(channels.array[..., j], seg, rescaled=True)] = number
            geometry = channels
    except Exception as exc:  # highdicom raises RuntimeError/ValueError (and others) for irregular frames
        raise InputError(
            path,
            f"frames do not form one regular 3-D volume ({exc.__class__.__name__}: {exc}); "
            "read it onto its CT with reference= instead",
        ) from None
    # highdicom's axes are (slice, row, column); ours are (column, row, slice).
    affine_lps = np.asarray(geometry.affine, dtype=np.float64)[:, [2, 1, 0, 3]]
    affine = LPS_TO_RAS @ affine_lps
    check_affine(path, affine)
    volume = Volume(array=np.ascontiguousarray(labels.transpose(2, 1, 0)), affine=affine, kind="labels")
    return canonical(volume)


def _frame_item(path: Path, seg: hd.seg.Segmentation, index: int, keyword: str) -> pydicom.Dataset:
    """The first item of a functional group for one frame: per-frame if present, else shared."""
    groups = []
    if "PerFrameFunctionalGroupsSequence" in seg:
        groups.append(seg.PerFrameFunctionalGroupsSequence[index])
    if "SharedFunctionalGroupsSequence" in seg:
        groups.append(seg.SharedFunctionalGroupsSequence[0])
    for group in groups:
        if keyword in group and len(group[keyword].value) > 0:
            return group[keyword].value[0]
    raise InputError(path, f"frame {index + 1} has no {keyword}: cannot place it in space")


def _frame_numbers(
    path: Path, seg: hd.seg.Segmentation, index: int, group: str, keyword: str, count: int
) -> np.ndarray:
    """``count`` numbers of attribute ``keyword`` in functional group ``group`` of one frame."""
    value = _frame_item(path, seg, index, group).get(keyword)
    try:
        numbers = np.asarray([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise InputError(path, f"frame {index + 1} has an unreadable {keyword} ({value!r})") from None
    if numbers.shape != (count,) or not np.all(np.isfinite(numbers)):
        raise InputError(path, f"frame {index + 1} has an invalid {keyword} ({value!r})")
    return numbers


def _seg_on_reference_grid(path: Path, seg: hd.seg.Segmentation, numbers: set[int], reference: Volume) -> np.ndarray:
    """Copy each frame into the reference grid without resampling.

    Returns:
        uint8 label array of the reference's shape (X, Y, Z).
    """
    reference_name = reference.meta.get("source") or "the reference volume"
    seg_for = str(seg.get("FrameOfReferenceUID", "") or "")
    reference_for = str(reference.meta.get("frame_of_reference_uid", "") or "")
    if seg_for and reference_for and seg_for != reference_for:
        raise InputError(
            path,
            f"has FrameOfReferenceUID {seg_for} but {reference_name} has {reference_for}: "
            "the segmentation belongs to another scan or registration",
        )

    is_labelmap = seg.segmentation_type == hd.seg.SegmentationTypeValues.LABELMAP
    rows, columns = int(seg.Rows), int(seg.Columns)
    to_index = np.linalg.inv(reference.affine)
    shape = np.array(reference.shape)
    frames = []
    for index in range(seg.number_of_frames):
        number = None
        if not is_labelmap:
            number = int(_frame_item(path, seg, index, "SegmentIdentificationSequence").ReferencedSegmentNumber)
            if number not in numbers:
                raise InputError(path, f"frame {index + 1} refers to segment {number}, which is not described")
        frames.append((index, number))
    # Later segments overwrite earlier ones where they overlap, whatever the frame order in the file.
    frames.sort(key=lambda frame: frame[1] or 0)

    labels = np.zeros(reference.shape, dtype=np.uint8)
    for index, number in frames:
        position = _frame_numbers(path, seg, index, "PlanePositionSequence", "ImagePositionPatient", 3)
        orientation = _frame_numbers(path, seg, index, "PlaneOrientationSequence", "ImageOrientationPatient", 6)
        spacing = _frame_numbers(path, seg, index, "PixelMeasuresSequence", "PixelSpacing", 2)
        # Frame pixel (column c, row r) → RAS mm → reference voxel index, as an affine map.
        origin = (to_index @ LPS_TO_RAS @ np.append(position, 1.0))[:3]
        step_column = to_index[:3, :3] @ (LPS_TO_RAS[:3, :3] @ orientation[:3]) * spacing[1]
        step_row = to_index[:3, :3] @ (LPS_TO_RAS[:3, :3] @ orientation[3:]) * spacing[0]
        corners = np.array([origin + c * step_column + r * step_row for c in (0, columns - 1) for r in (0, rows - 1)])
        unit_column, unit_row = np.rint(step_column), np.rint(step_row)
        axes_ok = (
            np.abs(unit_column).sum() == 1
            and np.abs(unit_row).sum() == 1
            and not np.array_equal(np.abs(unit_column), np.abs(unit_row))
        )
        worst = float(np.abs(corners - np.rint(corners)).max())
        if not axes_ok or worst > GRID_TOLERANCE_VOXELS:
            where = np.round(LPS_TO_RAS[:3, :3] @ position, 2).tolist()
            detail = "its pixel axes or spacing differ" if not axes_ok else f"off by {worst:.2f} voxel"
            raise InputError(
                path,
                f"frame {index + 1} (at RAS {where} mm) does not fall on the grid of {reference_name} "
                f"({detail}; tolerance {GRID_TOLERANCE_VOXELS} voxel)",
            )
        corner_index = np.rint(corners).astype(np.int64)
        if np.any(corner_index < 0) or np.any(corner_index >= shape):
            where = np.round(LPS_TO_RAS[:3, :3] @ position, 2).tolist()
            raise InputError(path, f"frame {index + 1} (at RAS {where} mm) lies (partly) outside {reference_name}")

        try:
            pixels = seg.get_stored_frame(index + 1)
        except Exception as exc:  # decoders raise many types; all mean "pixel data unusable"
            raise InputError(
                path, f"frame {index + 1} has unreadable pixel data ({exc.__class__.__name__}: {exc})"
            ) from None
        if is_labelmap:
            inside = np.isin(pixels, list(numbers))
        else:
            inside = _inside(pixels, seg, rescaled=False)
        row_index, column_index = np.nonzero(inside)
        target = (
            np.rint(origin).astype(np.int64)[:, None]
            + unit_column.astype(np.int64)[:, None] * column_index
            + unit_row.astype(np.int64)[:, None] * row_index
        )
        labels[target[0], target[1], target[2]] = pixels[inside] if is_labelmap else number
    return labels
