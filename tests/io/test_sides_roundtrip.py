"""Left and right survive storage (issue 24): a label map written as NIfTI in LPS order, or as a
DICOM CT series with a DICOM SEG (LPS patient coordinates), reads back with every organ on the
patient's side it was on (world RAS+: +x = patient's right)."""

from __future__ import annotations

import numpy as np

from guidegen.evaluation.mask_anatomy import SIDES, side_check
from guidegen.io.dicom import read_dicom_series
from guidegen.io.dicom_seg import read_dicom_seg
from guidegen.io.dicom_write import write_dicom_ct_series, write_dicom_seg
from guidegen.io.nifti import read_nifti, write_nifti
from guidegen.io.volume import Volume, canonical
from guidegen.labels.remap import class_for_name
from guidegen.labels.vocabulary import CLASSES, ID
from tests.sides_maps import abdomen, stored_lps

ALL_HOLD = dict.fromkeys(SIDES, True)


def test_nifti_stored_lps_reads_back_with_the_same_sides(tmp_path):
    labels = stored_lps(abdomen())
    path = write_nifti(labels, tmp_path / "labels.nii.gz")
    as_stored = read_nifti(path, kind="labels", reorient=False)
    assert as_stored.orientation == "LPS"
    read = read_nifti(path, kind="labels")
    assert read.orientation == "RAS"
    assert np.array_equal(read.array, canonical(labels).array)
    assert side_check(as_stored) == side_check(read) == ALL_HOLD


def test_dicom_series_and_seg_read_back_with_the_same_sides(tmp_path):
    labels = abdomen()
    ct = Volume(np.where(labels.array > 0, 40, -1000).astype(np.int16), labels.affine, "ct")
    folder = write_dicom_ct_series(ct, tmp_path / "ct")
    seg = write_dicom_seg(labels, folder, tmp_path / "seg.dcm", label_classes=CLASSES)
    reference = read_dicom_series(folder)
    segmented, segments = read_dicom_seg(seg, reference=reference)
    lut = np.zeros(256, np.uint8)
    for number, name in segments.items():
        lut[number] = ID[class_for_name(name)]
    back = segmented.with_array(lut[segmented.array])
    assert side_check(back) == ALL_HOLD
    right = back.world_coordinates(np.argwhere(back.array == ID["kidney_right"]))[:, 0].mean()
    left = back.world_coordinates(np.argwhere(back.array == ID["kidney_left"]))[:, 0].mean()
    assert right > 0 > left
