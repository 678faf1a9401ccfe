"""Data: readers, cleaning, splits, sampling, transforms and the datamodule."""
