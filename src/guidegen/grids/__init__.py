"""Label-map and CT grids: resampling, upsampling of sampled label maps, and mask geometry.

Below both stages (and below `data` and `text`), so the image stage upsamples a sampled map, data
preparation resamples scans and reports measure diameters without importing one another.
"""

from guidegen.grids.geometry import longest_diameter_mm
from guidegen.grids.resample import field_of_view, grid_affine, resample_ct, resample_labels, signed_distance
from guidegen.grids.upsample import component_counts, upsample_grid, upsample_labels

__all__ = [
    "component_counts",
    "field_of_view",
    "grid_affine",
    "longest_diameter_mm",
    "resample_ct",
    "resample_labels",
    "signed_distance",
    "upsample_grid",
    "upsample_labels",
]
