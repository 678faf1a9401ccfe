"""Sweeps: multirun summaries and the Optuna search behind the Hydra sweeper. Imports core and
the rooms below it, never runs."""
