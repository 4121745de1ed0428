"""The GuideGen label vocabulary and mappings from public datasets' label ids."""

from guidegen.labels.vocabulary import CLASSES, ID, NAMES, NUM_CLASSES, ORGANS, UNKNOWN, class_id

__all__ = ["CLASSES", "ID", "NAMES", "NUM_CLASSES", "ORGANS", "UNKNOWN", "class_id"]
