"""Data: readers, the one resize, image cache, splits, sampling, augmentation, the datamodule.
Imports core and cleaning."""
