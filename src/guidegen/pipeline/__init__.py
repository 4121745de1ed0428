"""Wires the stages together: prompt → text → masks → upsample → images → writers.

* `GuideGen` (`generate.py`): the Python API, prompt → `GeneratedCase` objects in memory.
* `generate_dataset` (`dataset.py`): prompts → case folders (NIfTI), an nnU-Net raw dataset or DICOM,
  sharded across ranks, resumable.
* `folders.py`: the other folder-level commands (reports for label files, sampled masks, CT for a
  user's label map, the bundled-data demo).
"""

from guidegen.pipeline.folders import (
    generate_ct_to_folder,
    load_labels,
    report_for_label_file,
    run_demo,
    sample_masks_to_folder,
)
from guidegen.pipeline.generate import GeneratedCase, GuideGen
from guidegen.settings import GenerationSettings, check_prompt

__all__ = [
    "GeneratedCase",
    "GenerationSettings",
    "GuideGen",
    "check_prompt",
    "generate_ct_to_folder",
    "load_labels",
    "report_for_label_file",
    "run_demo",
    "sample_masks_to_folder",
]
