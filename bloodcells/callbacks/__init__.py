"""Callbacks for training: staged early stopping, the time budget, RNG state, epoch lines and
the TTA/ensemble step after fit. Imports core, data, models and inference."""
