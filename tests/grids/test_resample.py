"""Resampling label maps onto another grid (guidegen.grids.resample): shape-based interpolation."""

from __future__ import annotations

import numpy as np
from scipy import ndimage

from guidegen.grids.resample import grid_affine, resample_labels
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import UNKNOWN


def test_shape_based_label_upsampling_has_no_staircase():
    # A sphere sampled at 6 mm slices, upsampled to 2 mm: nearest neighbour would give 3-slice
    # plateaus; shape-based interpolation makes the radius change on every slice.
    zz = np.arange(12) * 6.0
    xx = np.arange(40) * 2.0
    X, Y, Z = np.meshgrid(xx, xx, zz, indexing="ij")
    sphere = ((X - 40) ** 2 + (Y - 40) ** 2 + (Z - 33) ** 2 <= 25**2).astype(np.uint8)
    src = Volume(sphere, np.diag([2.0, 2.0, 6.0, 1.0]), "labels")
    out = resample_labels(src, grid_affine((2.0, 2.0, 2.0), np.zeros(3)), (40, 40, 34), mark_outside_unknown=False)
    areas = (out.array == 1).sum(axis=(0, 1))
    core = areas[6:12]  # slices where the sphere's cross-section grows
    assert np.all(np.diff(core) > 0), areas
    # Volume is kept within 5 % of the analytic sphere.
    assert abs((out.array == 1).sum() * 8.0 / (4 / 3 * np.pi * 25**3) - 1) < 0.05
    assert ndimage.label(out.array == 1)[1] == 1


def test_outside_the_scan_is_unknown():
    src = Volume(np.ones((10, 10, 10), np.uint8), np.eye(4), "labels")
    out = resample_labels(src, grid_affine((1.0, 1.0, 1.0), np.array([-5.0, 0, 0])), (20, 10, 10))
    assert np.all(out.array[:4] == UNKNOWN) and np.all(out.array[6:14] == 1)


def test_a_point_between_two_touching_classes_takes_one_of_them_not_background():
    # Liver (4) and tumour (11) meet with no background between them. Target points half-way
    # between their voxels lie on both borders (signed distance 0 for each) and used to come out
    # background, which the CT generator draws as air in the middle of the liver.
    array = np.full((12, 12, 12), 4, np.uint8)
    array[6:, :, :] = 11
    array[:, :, :2] = 0  # some real background, away from the interface
    src = Volume(array, np.eye(4), "labels")
    # A 2 mm grid whose x centres fall half-way between source voxels (x = 1.5, 3.5, 5.5, ...);
    # its third column (x = 5.5) lies exactly on the interface.
    out = resample_labels(src, grid_affine((2.0, 2.0, 2.0), np.array([1.5, 0.0, 0.0])), (5, 6, 6)).array
    assert set(np.unique(out[:, :, 2:]).tolist()) <= {4, 11}, np.unique(out)
    assert (out[:2, :, 2:] == 4).all() and (out[3:, :, 2:] == 11).all()
    # Beside real background the shape-based boundary is unchanged: the background slab stays.
    assert (out[:, :, 0] == 0).all()


def test_between_thick_slices_two_thin_classes_leave_no_background_gap():
    # 5 mm slices: class 6 in slice 2, class 9 in slice 3, each only 2 voxels wide in-plane, inside a
    # "body" class (12). Half-way between the slices both thin classes have positive distance.
    array = np.full((20, 20, 6), 12, np.uint8)
    array[9:11, 5:15, :3] = 6
    array[9:11, 5:15, 3:] = 9
    src = Volume(array, np.diag([0.8, 0.8, 5.0, 1.0]), "labels")
    out = resample_labels(src, grid_affine((0.8, 0.8, 1.0), np.zeros(3)), (20, 20, 26)).array
    assert not (out[:, :, :25] == 0).any(), np.argwhere(out[:, :, :25] == 0)[:5]


def test_each_class_transformed_only_near_its_box_gives_the_whole_grid_result():
    # resample_labels transforms each class's distance map only over the target voxels that can see
    # its source box; this reference transforms every class over the whole target grid.
    from scipy import ndimage
    from scipy.spatial.transform import Rotation

    from guidegen.grids.resample import _index_map, signed_distance

    rng = np.random.default_rng(3)
    field = ndimage.gaussian_filter(rng.normal(size=(5, 14, 12, 10)), sigma=(0, 2, 2, 2))
    array = (np.argmax(field, axis=0) * 2).astype(np.uint8)  # classes 0, 2, 4, 6, 8 in blobs
    affine = np.eye(4)
    affine[:3, :3] = Rotation.from_euler("xyz", [20, -35, 50], degrees=True).as_matrix() * [4.0, 5.0, 6.0]
    labels = Volume(array, affine, "labels")
    target = np.eye(4)
    target[:3, :3] = np.diag([1.7, 2.1, 2.9])
    target[:3, 3] = affine[:3, 3] - 20.0
    shape = (40, 44, 38)
    out = resample_labels(labels, target, shape, mark_outside_unknown=False).array
    matrix, offset = _index_map(labels, target)
    best = np.full(shape, 1e6, np.float32)
    expected = np.zeros(shape, np.uint8)
    for cls in np.unique(array)[1:]:
        sdf = ndimage.affine_transform(
            signed_distance(array == cls, labels.spacing), matrix, offset, output_shape=shape, order=1, cval=1e6
        )
        take = (sdf < 0) & (sdf < best)
        best[take], expected[take] = sdf[take], cls
    inside = expected != 0
    assert inside.sum() > 2000 and set(np.unique(expected[inside])) == {2, 4, 6, 8}
    assert np.array_equal(out[inside], expected[inside])  # background gaps are filled apart from this
