"""Text side of GuideGen: structured attribute records, measuring them from label maps, writing
radiology-style reports from them and parsing free-text prompts back into them."""
