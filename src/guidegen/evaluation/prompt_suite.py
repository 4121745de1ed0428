"""A fixed suite of prompts for checking the Volumetric Mask Sampler (`guidegen sample-masks --check`).

The prompts are phrased the way users type them: terse findings, sizes in mm and cm, negations,
demographics, and mixtures. Together they cover

* every tumour host the sampler supports (`guidegen.labels.vocabulary.TUMOUR_HOSTS`): liver (and
  both lobes), right and left kidney, pancreas, colon (caecum, ascending, transverse, descending,
  sigmoid, rectum, and unspecified), spleen and stomach;
* single and multiple tumours (stated counts and "multiple"), sizes from 15 mm to 9 cm;
* enlargement of the spleen, the liver and either or both kidneys (with and without a severity),
  small organs, removed organs, and healthy / tumour-free abdomens.

Every prompt parses (`guidegen.text.parse.parse_prompt`) into at least one stated attribute; most
state something a label map can show, so `guidegen.evaluation.masks.adherence_check` scores them.
Prompts stating only demographics ("normal CT of a 45-year-old woman") are kept on purpose: they
test unconditional-looking samples, and their adherence is not scored.

The order is fixed (results are compared between runs prompt by prompt); append new prompts at the
end rather than reordering.
"""

from __future__ import annotations

PROMPT_SUITE: tuple[str, ...] = (
    # Healthy, tumour-free, demographics only.
    "healthy abdomen, no tumour",
    "normal CT of a 45-year-old woman",
    "normal abdominal CT, no focal lesion",
    "72-year-old man, unremarkable abdomen and pelvis",
    "no evidence of malignancy",
    "tumour-free abdomen of a 30 year old female",
    "liver, spleen and kidneys are normal in size",
    # Liver (lobes, counts, cm and mm).
    "4 cm liver tumour",
    "3 cm tumour in the liver",
    "liver metastases, two lesions up to 25 mm",
    "multiple liver metastases, the largest 4 cm",
    "hepatocellular carcinoma 6 cm in the right lobe of the liver",
    "solitary 15 mm lesion in the left lobe of the liver",
    "55-year-old man with a 5 cm HCC",
    "three hepatic metastases up to 30 mm",
    "large 9 cm liver mass",
    # Kidneys.
    "3 cm tumour in the right kidney",
    "left renal mass 45 mm",
    "5 cm renal cell carcinoma of the left kidney",
    "small 2 cm lesion in the right kidney, no other tumour",
    "62-year-old woman, 7 cm right renal tumour",
    "left kidney tumour 35 mm",
    # Pancreas.
    "pancreatic head mass 3 cm",
    "pancreatic cancer 4 cm",
    "2.5 cm tumour in the tail of the pancreas",
    "58-year-old man with a 35 mm pancreatic mass",
    # Colon, every segment.
    "68-year-old man, 4 cm sigmoid colon cancer, mild splenomegaly",
    "caecal tumour 5 cm",
    "3 cm cancer of the caecum",
    "ascending colon carcinoma 45 mm",
    "tumour of the ascending colon, 6 cm",
    "transverse colon cancer 4 cm",
    "5 cm mass in the transverse colon",
    "descending colon tumour 35 mm",
    "4 cm carcinoma of the descending colon",
    "sigmoid colon cancer 50 mm",
    "rectal cancer 4 cm",
    "6 cm tumour of the rectum in a 70-year-old woman",
    "colon cancer 5 cm",
    "2 cm polyp-like lesion in the sigmoid colon",
    # Spleen and stomach.
    "3 cm splenic lesion",
    "tumour in the spleen, 4 cm",
    "gastric cancer 5 cm",
    "4 cm mass in the stomach",
    "stomach tumour 30 mm in a 66-year-old man",
    # Organ size.
    "hepatomegaly",
    "splenomegaly",
    "marked splenomegaly, no tumour",
    "enlarged liver",
    "enlarged spleen",
    "enlarged kidneys",
    "enlarged left kidney",
    "enlarged right kidney",
    "moderate hepatomegaly in a 50-year-old woman",
    "hepatosplenomegaly",
    "small atrophic right kidney",
    "small spleen",
    # Mixed findings, removed organs.
    "4 cm liver tumour and splenomegaly",
    "rectal cancer 5 cm with two liver metastases up to 2 cm",
    "sigmoid colon cancer 4 cm, liver metastasis 3 cm",
    "left renal tumour 4 cm, normal liver",
    "pancreatic head mass 3 cm and hepatomegaly",
    "45-year-old woman, no tumour, enlarged spleen",
    "status post right nephrectomy, 3 cm tumour in the left kidney",
    "status post splenectomy, no tumour",
)
