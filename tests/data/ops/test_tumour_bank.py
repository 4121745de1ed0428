"""The bank of real tumour shapes (`guidegen.data.ops.tumour_bank`)."""

from __future__ import annotations

import numpy as np

from guidegen.data.ops import load_tumour_shapes


def test_shape_bank_loads_real_tumours(bank, real):
    assert len(bank) >= 2
    sources = {s.source.split("#")[0] for s in bank}
    assert sources == {"lits-117-crop/labels.nii.gz", "masks-only/msd_colon_050_tumour.nii.gz"}
    for shape in bank:
        assert shape.mask.any() and shape.diameter_mm > 0 and max(shape.mask.shape) <= 48
        assert shape.sdf.shape == shape.mask.shape and np.array_equal(shape.sdf < 0, shape.mask)
    few = load_tumour_shapes([(real / "lits-117-crop" / "labels.nii.gz", 2)], min_voxels=5000)
    assert 1 <= len(few) < len([s for s in bank if s.source.startswith("lits")])
