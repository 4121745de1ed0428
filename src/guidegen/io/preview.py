"""Preview pictures: axial, coronal and sagittal CT slices with a coloured label overlay and legend."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from guidegen.io.atomic import atomic_file
from guidegen.io.volume import Volume

#: Abdominal soft-tissue window (level 40 HU, width 400 HU), what radiologists read abdomens in.
WINDOW = (-160.0, 240.0)


def _centre(
    labels: Volume | None, shape: tuple[int, int, int], skip: Sequence[int], focus: Sequence[int] = ()
) -> tuple[int, int, int]:
    if labels is not None:
        for class_id in focus:  # a lesion is what the reader looks for: cut through the largest one
            mask = labels.array == class_id
            if mask.any():
                from scipy import ndimage

                components, n = ndimage.label(mask)
                largest = int(np.argmax(np.bincount(components.ravel())[1:])) + 1 if n > 1 else 1
                return tuple(int(round(v)) for v in np.argwhere(components == largest).mean(0))  # type: ignore[return-value]
        fg = ~np.isin(labels.array, list(skip))
        if fg.any():
            return tuple(int(round(v)) for v in np.argwhere(fg).mean(0))  # type: ignore[return-value]
    return tuple(s // 2 for s in shape)  # type: ignore[return-value]


def render_preview(
    path: str | Path,
    ct: Volume | None,
    labels: Volume | None,
    class_names: Sequence[str],
    class_colours: Sequence[tuple[int, int, int]],
    title: str = "",
    overwrite: bool = False,
    skip_classes: Sequence[int] = (0, 255),
    alpha: float = 0.45,
    focus_classes: Sequence[int] = (),
) -> Path:
    """Write a PNG with three orthogonal slices through the labelled anatomy's centre.

    With ``focus_classes`` (e.g. the tumour id) the slices go through the largest component of the
    first of those classes present instead.

    Args:
        path: output .png (written atomically).
        ct: CT in HU (canonical RAS) or None for a label-only picture.
        labels: label map on the CT's grid, or None.
        class_names, class_colours: per class id, for the overlay and legend.
        skip_classes: ids not drawn (background, unknown); ``body`` is usually added by callers.
    """
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    from matplotlib.patches import Patch

    ref = ct if ct is not None else labels
    if ref is None:
        raise ValueError("need a CT or a label map to draw")
    cx, cy, cz = _centre(labels, ref.shape, skip_classes, focus_classes)
    sx, sy, sz = ref.spacing

    # (image, extent aspect): each panel shown with anatomical orientation (radiological convention:
    # patient's right on the image's left, anterior up, superior up).
    def panel(vol: np.ndarray, plane: str) -> np.ndarray:
        # RAS arrays: x grows to the patient's right, y anterior, z superior. Flip both display axes
        # so that the patient's right is on the image's left, anterior and superior are up, and
        # sagittal images face left, as radiologists read them.
        if plane == "axial":
            return vol[:, :, cz].T[::-1, ::-1]
        if plane == "coronal":
            return vol[:, cy, :].T[::-1, ::-1]
        return vol[cx, :, :].T[::-1, ::-1]

    aspects = {"axial": sy / sx, "coronal": sz / sx, "sagittal": sz / sy}
    lut = np.zeros((256, 4), dtype=np.float32)
    for i, colour in enumerate(class_colours):
        if i not in skip_classes:
            lut[i, :3] = np.asarray(colour) / 255.0
            lut[i, 3] = alpha
    present = (
        sorted(int(i) for i in np.unique(labels.array) if int(i) not in skip_classes and int(i) < len(class_names))
        if labels is not None
        else []
    )
    fig, axes = plt.subplots(1, 3, figsize=(13, 5), facecolor="black")
    for ax, plane in zip(axes, ("axial", "coronal", "sagittal")):
        if ct is not None:
            ax.imshow(
                panel(ct.array, plane),
                cmap="gray",
                vmin=WINDOW[0],
                vmax=WINDOW[1],
                aspect=aspects[plane],
                interpolation="bilinear",
            )
        else:
            ax.imshow(np.zeros_like(panel(labels.array, plane), dtype=float), cmap="gray", aspect=aspects[plane])
        if labels is not None:
            ax.imshow(lut[panel(labels.array, plane).astype(np.int64)], aspect=aspects[plane], interpolation="nearest")
        ax.set_title(plane, color="white")
        ax.axis("off")
    if present:
        handles = [Patch(facecolor=np.asarray(class_colours[i]) / 255.0, label=class_names[i]) for i in present]
        fig.legend(
            handles=handles,
            loc="lower center",
            ncol=min(6, len(handles)),
            frameon=False,
            labelcolor="white",
            fontsize=9,
        )
    if title:
        fig.suptitle(title, color="white", fontsize=10, parse_math=False)  # a prompt's "$" is no TeX
    path = Path(path)
    try:
        with warnings.catch_warnings():
            # A prompt's emoji or CJK characters are drawn as boxes; that is no reason for a warning.
            warnings.filterwarnings("ignore", message=r"Glyph \d+ .*missing from", category=UserWarning)
            fig.tight_layout(rect=(0, 0.08 if present else 0, 1, 0.95 if title else 1))
            with atomic_file(path, overwrite) as tmp:
                fig.savefig(tmp, format="png", dpi=90, facecolor="black")
    finally:
        plt.close(fig)
    return path
