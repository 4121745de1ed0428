"""Training examples for the mask sampler: augmented real label maps with matching text.

Example ``i`` is a pure function of ``(config.seed, i)``: the same index always gives the same map
and text, which makes training resumable exactly and examples inspectable (`guidegen train masks`
logs nothing random that cannot be regenerated).

Assumption, stated because it matters: base cases without a tumour class (TotalSegmentator, AMOS)
are treated as tumour-free, so "no tumour" can be learned. Their other unannotated classes stay
unknown (`ignore_classes`) and are excluded from the loss.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from guidegen.data.augment import AugmentConfig, augment_case
from guidegen.data.ops import ElasticDeformation, OrganScaling, RigidJitter, TumourInsertion
from guidegen.io.volume import Volume
from guidegen.labels.vocabulary import ID, NAMES, TUMOUR_HOSTS, fold_for_model, fold_names
from guidegen.masks.config import MaskSamplerConfig
from guidegen.text.attributes import SEXES, Attributes, Tumour
from guidegen.text.measure import colon_segment_of, measure_labels
from guidegen.text.report import write_prompt, write_report


def _site_of(labels: Volume, points: np.ndarray) -> list[str]:
    return [s or "unknown" for s in colon_segment_of(labels, points)]


def drop_fields(attrs: Attributes, rng: np.random.Generator, p: float, p_abnormal: float | None = None) -> Attributes:
    """Forget some stated fields at random, as a user's prompt would not state them.

    Normal organs are dropped more often than abnormal ones (prompts mention what is abnormal), and
    tumour details (segment, size, count) independently of the tumour itself. Sex and age, which the
    label maps do not determine, are added at random so the text encoder learns to ignore them.

    Args:
        p: the drop probability of a field (normal organs: ``min(0.9, 2p)``).
        p_abnormal: of an abnormal organ finding, and of the tumour statement as a whole; ``None``
            keeps the earlier rule (``p`` and ``p / 3``). A small value is meant to teach the sampler
            that an organ a prompt does not mention is normal, as users write prompts; tried at 0.05
            (``docs/results/mask_sampler_totalseg.txt``, section 3) it did not shrink the spleen yet.
    """
    organ_drop = p if p_abnormal is None else p_abnormal
    tumour_drop = p / 3 if p_abnormal is None else p_abnormal
    organs = {}
    for name, finding in attrs.organs.items():
        keep_p = 1 - (min(0.9, p * 2) if finding.state == "normal" else organ_drop)
        if rng.random() < keep_p:
            organs[name] = finding
    tumours = attrs.tumours
    if tumours is not None and rng.random() < tumour_drop:
        tumours = None
    elif tumours:
        tumours = tuple(
            Tumour(
                organ=t.organ,
                segment=None if rng.random() < p / 2 else t.segment,
                diameter_mm=None if rng.random() < p / 2 else t.diameter_mm,
                count=t.count,
            )
            for t in tumours
        )
    sex = SEXES[int(rng.integers(len(SEXES)))] if rng.random() < 0.4 else None
    age = int(rng.integers(25, 90)) if rng.random() < 0.4 else None
    return Attributes(sex=sex, age=age, tumours=tumours, organs=organs, field_of_view=None)


def anatomy_augmentation(
    p_elastic: float, p_organ_scaling: float, tumour: TumourInsertion | None = None, p_tumour: float = 0.0
) -> AugmentConfig:
    """The mask sampler's augmentation of a real map (rigid jitter, elastic deformation, organ scaling,
    optional tumour insertion); the learned tumour stage augments its anatomies the same way."""
    return AugmentConfig(
        elastic=ElasticDeformation(),
        p_elastic=p_elastic,
        jitter=RigidJitter(max_rotation_deg=4.0, max_translation_mm=8.0),
        p_jitter=0.8,
        scaling=OrganScaling(volume_factor=(0.75, 2.2)),
        p_scaling=p_organ_scaling,
        max_scalings=2,
        tumour=tumour,
        p_tumour=p_tumour,
    )


class MaskExamples:
    """Indexable stream of training examples (dicts with labels, text, attributes, ignore_classes)."""

    def __init__(self, cases: list[dict[str, Any]], config: MaskSamplerConfig):
        from guidegen.masks.sampler import sampler_grid

        self.cases = cases
        self.config = config
        self.affine = sampler_grid(config)
        # Full-anatomy cases (colon annotated) teach the whole layout; weight them up.
        weights = np.array([3.0 if "colon" in c["annotated"] else 1.0 for c in cases])
        self.weights = weights / weights.sum()
        self.augmenters = []
        for case in cases:
            hosts = [h for h in TUMOUR_HOSTS if h in case["annotated"] and np.any(case["labels"] == ID[h])]
            tumour = TumourInsertion(hosts=hosts, site_of=_site_of) if hosts else None
            self.augmenters.append(
                anatomy_augmentation(
                    config.p_elastic, config.p_organ_scaling, tumour, config.p_tumour if tumour is not None else 0.0
                )
            )

    def __len__(self) -> int:  # effectively infinite; a large finite length for DataLoader users
        return 2**31 - 1

    def __getitem__(self, index: int) -> dict[str, Any]:
        rng = np.random.default_rng([self.config.seed, 7919, int(index)])
        k = int(rng.choice(len(self.cases), p=self.weights))
        case = self.cases[k]
        base = Volume(case["labels"].copy(), self.affine.copy(), "labels")
        labels, record = augment_case(base, rng, self.augmenters[k])
        annotated = set(case["annotated"])
        measured = measure_labels(labels, annotated=annotated).attributes
        stated = drop_fields(measured, rng, self.config.p_field_drop, self.config.p_abnormal_drop)
        text_seed = int(rng.integers(2**31))
        text = write_report(stated, seed=text_seed) if rng.random() < 0.5 else write_prompt(stated, seed=text_seed)
        # A config with fewer classes than the vocabulary (an older model's) sees the newer classes
        # as what they were before they had ids (guidegen.labels.vocabulary.FALLBACK).
        k = self.config.num_classes
        known = set(fold_names(sorted(annotated), k))
        ignore = np.array([name not in known and name != "background" for name in NAMES[:k]], dtype=bool)
        return {
            "labels": fold_for_model(labels.array, k),
            "text": text,
            "attributes": stated,
            "ignore_classes": ignore,
            "case_id": case["case_id"],
            "record": record,
        }
