"""Volumes in and out, always with their affine, in one canonical (RAS+) orientation inside."""

from guidegen.io.nifti import read_nifti, write_nifti
from guidegen.io.volume import Volume, canonical

__all__ = ["Volume", "canonical", "read_nifti", "write_nifti"]
