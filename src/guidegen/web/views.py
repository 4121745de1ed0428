"""What the web app's JSON and pictures are made of: the label table, what the parser understood,
requested against measured attributes, and server-rendered slices for browsers without WebGL2.

Colours come from one place, `guidegen.labels.vocabulary.preview_colour`, for the viewer's colour
table, the legend, these slices and the case folders' preview.png alike.
"""

from __future__ import annotations

import functools
import io
import re
from pathlib import Path
from typing import Any

import numpy as np

from guidegen.labels.vocabulary import CLASSES, ID, UNKNOWN, preview_colour
from guidegen.settings import check_prompt
from guidegen.text.agreement import organ_agreement, tumour_agreement
from guidegen.text.attributes import Attributes
from guidegen.text.parse import parse_prompt

#: Window presets (level, width) in HU, as radiologists name them.
WINDOWS: dict[str, tuple[float, float]] = {
    "abdomen": (40.0, 400.0),
    "liver": (60.0, 160.0),
    "bone": (400.0, 1800.0),
    "lung": (-600.0, 1500.0),
}
AXES = ("axial", "coronal", "sagittal")
#: Classes the overlay leaves out by default: the body outline would tint the whole patient.
HIDDEN_BY_DEFAULT = ("body",)
#: Most words whose part in the parse is tested one by one (a prompt is at most 2000 characters).
MAX_WORDS_TESTED = 120


def label_table() -> list[dict[str, Any]]:
    """Every class of the vocabulary with its preview colour (what ``GET /api/labels`` returns)."""
    return [
        {
            "id": c.id,
            "name": c.name,
            "display": c.display,
            "colour": list(preview_colour(c.id)),
            "shown": c.name not in HIDDEN_BY_DEFAULT,
        }
        for c in CLASSES
        if c.id != 0
    ]


def understood(prompt: str) -> dict[str, Any]:
    """What the parser reads in ``prompt``: its attributes, the words that changed nothing, warnings.

    A word counts as ignored when the prompt without it parses to the same attributes: the parser's
    own behaviour decides, so this never disagrees with what generation will use.
    """
    cleaned = check_prompt(prompt, "prompt")
    attributes = parse_prompt(cleaned)
    words = list(re.finditer(r"[^\s,;.]+", cleaned))
    ignored: list[str] = []
    reference = attributes.to_dict()
    for match in words[:MAX_WORDS_TESTED]:
        rest = (cleaned[: match.start()] + " " + cleaned[match.end() :]).strip()
        if not rest or not re.search(r"\w", rest):
            continue
        try:
            same = parse_prompt(rest).to_dict() == reference
        except ValueError:
            same = False
        if same:
            ignored.append(match.group())
    return {
        "prompt": cleaned,
        "attributes": reference,
        "ignored": ignored,
        "warnings": _warnings(attributes),
    }


def _warnings(attributes: Attributes) -> list[str]:
    notes = []
    if attributes.phase is None:
        notes.append("no contrast phase stated: the model chooses one (or set the phase option)")
    for k, tumour in enumerate(attributes.tumours or (), start=1):
        if tumour.organ is None:
            notes.append(f"tumour {k}: no host organ understood, so it is placed where the model draws it")
        if tumour.diameter_mm is None:
            notes.append(f"tumour {k}: no size understood, so the model chooses one")
    if attributes.to_dict() == Attributes().to_dict():
        notes.append("nothing in the prompt was understood: the case will be a random abdomen")
    return notes


def comparison(case: dict[str, Any], ct: np.ndarray | None, labels: np.ndarray | None) -> dict[str, Any]:
    """Requested against measured for one case (from its case.json and, for phase HU, its volumes)."""
    requested = Attributes.from_dict(case["requested"]) if case.get("requested") else None
    measured = Attributes.from_dict(case["measured"]) if case.get("measured") else None
    organs = []
    if measured is not None:
        for name, finding in measured.organs.items():
            stated = requested.organs.get(name) if requested is not None else None
            holds = organ_agreement(name, stated, finding) if stated is not None else {}
            organs.append(
                {
                    "organ": name,
                    "requested": None if stated is None else stated.to_dict(),
                    "measured": finding.to_dict(),
                    "holds": holds,
                }
            )
    asked = None if requested is None else requested.tumours
    made = None if measured is None else measured.tumours
    tumours = {
        "requested": None if asked is None else [t.to_dict() for t in asked],
        "measured": None if made is None else [t.to_dict() for t in made],
        "holds": tumour_agreement(requested.tumours, measured.tumours) if requested and measured else {},
    }
    phase_hu = {}
    if ct is not None and labels is not None:
        for name in ("aorta", "liver", "portal_vein", "kidney_left", "kidney_right", "spleen"):
            if name in ID:
                inside = labels == ID[name]
                if inside.any():
                    phase_hu[name] = round(float(ct[inside].mean()), 1)
    return {
        "phase": {"requested": case.get("phase"), "mean_hu": phase_hu},
        "organs": organs,
        "tumours": tumours,
    }


@functools.lru_cache(maxsize=4)
def _volumes(folder: str, stamp: float) -> tuple[np.ndarray, np.ndarray]:
    """A case's CT and labels, RAS+ (cached by folder and modification time)."""
    from guidegen.io.nifti import read_nifti

    ct = read_nifti(Path(folder) / "ct.nii.gz", kind="ct")
    labels = read_nifti(Path(folder) / "labels.nii.gz", kind="labels")
    return ct.array, labels.array


def case_volumes(folder: Path) -> tuple[np.ndarray, np.ndarray]:
    return _volumes(str(folder), (folder / "labels.nii.gz").stat().st_mtime)


def render_slice(
    ct: np.ndarray,
    labels: np.ndarray,
    axis: str,
    index: int | None,
    fraction: float | None,
    window: str,
    hidden: set[int],
    opacity: float,
) -> bytes:
    """One slice as PNG: the CT in ``window`` with the visible classes blended over it; the slice is
    ``index`` (clipped to the volume) or at ``fraction`` (0–1) of the axis, default the middle."""
    from matplotlib.image import imsave

    size = {"axial": ct.shape[2], "coronal": ct.shape[1], "sagittal": ct.shape[0]}[axis]
    if index is None:
        index = round((0.5 if fraction is None else fraction) * (size - 1))
    index = min(max(int(index), 0), size - 1)
    if axis == "axial":
        image, label = ct[:, :, index], labels[:, :, index]
    elif axis == "coronal":
        image, label = ct[:, index, :], labels[:, index, :]
    else:
        image, label = ct[index, :, :], labels[index, :, :]
    # RAS+ arrays: rows become the screen's vertical (anterior / superior up), as viewers show them.
    image, label = np.flipud(image.T), np.flipud(label.T)
    level, width = WINDOWS[window]
    grey = np.clip((image.astype(np.float32) - (level - width / 2)) / width, 0.0, 1.0)
    rgb = np.repeat(grey[..., None], 3, axis=2)
    lut = np.zeros((256, 3), dtype=np.float32)
    for c in CLASSES:
        lut[c.id] = np.asarray(preview_colour(c.id), dtype=np.float32) / 255.0
    shown = (label != 0) & (label != UNKNOWN) & ~np.isin(label, sorted(hidden))
    rgb[shown] = (1 - opacity) * rgb[shown] + opacity * lut[label[shown]]
    buffer = io.BytesIO()
    imsave(buffer, rgb, format="png")
    return buffer.getvalue()
