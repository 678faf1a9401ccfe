"""Inference: safe checkpoint loading, the predictor, TTA, calibration, metrics, ensembles and
the deployable module. Imports core, cleaning, data and models."""
