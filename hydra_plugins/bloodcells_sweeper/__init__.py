"""Hydra plugins of bloodcells (Hydra loads sweepers only from the ``hydra_plugins`` namespace)."""
