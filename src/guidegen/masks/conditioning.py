"""Attribute record → fixed-length conditioning vector for the mask sampler.

Every field has an explicit "unknown" slot, so "not stated" and "stated as absent / normal" are
different inputs: a prompt that says nothing about the spleen must not be read as "normal spleen".
Age, sex and phase are deliberately *not* encoded: the mask sampler has no data that ties them to
anatomy (phase only changes intensities, which the image generator handles).
"""

from __future__ import annotations

import math

import numpy as np

from guidegen.text.attributes import COLON_SEGMENTS, KIDNEY_UNSPECIFIED, Attributes

#: Tumour hosts the sampler distinguishes (others map to "other").
HOSTS: tuple[str, ...] = ("liver", "kidney_right", "kidney_left", "pancreas", "colon", "spleen", "stomach", "other")
#: Organs whose size the sampler can be told about.
SIZED_ORGANS: tuple[str, ...] = ("spleen", "liver", "kidney_right", "kidney_left", "pancreas")
_STATES = ("unknown", "small", "normal", "enlarged")
_SEVERITY = {None: 0.5, "mild": 1.0, "moderate": 2.0, "marked": 3.0}
#: Typical tumour diameter the log-size feature is centred on (mm).
_REFERENCE_DIAMETER_MM = 30.0


def attribute_dim() -> int:
    return 3 + len(HOSTS) + len(COLON_SEGMENTS) + 3 + 2 + len(SIZED_ORGANS) * (len(_STATES) + 1)


def attribute_vector(attrs: Attributes | None) -> np.ndarray:
    """Encode the mask-relevant part of ``attrs`` as a float32 vector of length `attribute_dim`.

    Layout: tumour state one-hot [unknown, none, present]; host one-hot (largest tumour group);
    colon segment one-hot; diameter [known, log(d / 30 mm), 0]; count [known, min(count, 4) / 4];
    then per sized organ a state one-hot [unknown, small, normal, enlarged] and a severity scalar.
    ``None`` encodes "nothing known" (used for classifier-free guidance).
    """
    v = np.zeros(attribute_dim(), dtype=np.float32)
    i = 0
    tumours = None if attrs is None else attrs.tumours
    if tumours is None:
        v[i] = 1
    elif len(tumours) == 0:
        v[i + 1] = 1
    else:
        v[i + 2] = 1
    i += 3
    main = None
    if tumours:
        main = max(tumours, key=lambda t: t.diameter_mm or 0.0)
        host = main.organ
        if host == KIDNEY_UNSPECIFIED:
            host = "kidney_right"  # side not stated: either kidney is right; pick one consistently
        if host is not None:
            v[i + (HOSTS.index(host) if host in HOSTS else HOSTS.index("other"))] = 1
    i += len(HOSTS)
    if main is not None and main.organ == "colon" and main.segment in COLON_SEGMENTS:
        v[i + COLON_SEGMENTS.index(main.segment)] = 1
    i += len(COLON_SEGMENTS)
    if main is not None and main.diameter_mm:
        v[i] = 1
        v[i + 1] = math.log(main.diameter_mm / _REFERENCE_DIAMETER_MM)
    i += 3
    if tumours:
        total = sum((t.count or 2) for t in tumours)
        v[i] = 1
        v[i + 1] = min(total, 4) / 4
    i += 2
    organs = {} if attrs is None else attrs.organs
    for organ in SIZED_ORGANS:
        finding = organs.get(organ)
        state = finding.state if finding is not None and finding.state in _STATES else "unknown"
        v[i + _STATES.index(state)] = 1
        if state in ("small", "enlarged"):
            v[i + len(_STATES)] = _SEVERITY[finding.severity] / 3.0
        i += len(_STATES) + 1
    return v
