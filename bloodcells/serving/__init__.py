"""Serving: the local page a trained model is shown on (``python -m bloodcells.serve``): uploads,
the scoring behind the page, a small HTTP server. Imports the rooms below it, never runs or sweeps."""
