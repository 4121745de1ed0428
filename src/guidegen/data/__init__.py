"""Preprocessing, datasets and augmentation of real CT and label maps."""
