"""Domain terms every stage shares, defined once: contrast phases and colon segments.

Plain tuples with no imports, so the lowest layers (`guidegen.data`, `guidegen.settings`) and the
highest (`guidegen.text`, `guidegen.pipeline`) read the same names.
"""

from __future__ import annotations

__all__ = ["COLON_SEGMENTS", "PHASES"]

#: Contrast phases of an abdominal CT, in the order of a multiphase study.
PHASES: tuple[str, ...] = ("non_contrast", "arterial", "portal_venous", "delayed")

#: Colon segments, oral to aboral. Flexures are folded into the neighbouring segment by the parser.
COLON_SEGMENTS: tuple[str, ...] = ("caecum", "ascending", "transverse", "descending", "sigmoid", "rectum")
