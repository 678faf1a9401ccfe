"""bloodcells: a Lightning + Hydra framework for 8-class blood-cell image classification."""

CLASS_NAMES: tuple[str, ...] = (
    "basophil",
    "eosinophil",
    "erythroblast",
    "ig",
    "lymphocyte",
    "monocyte",
    "neutrophil",
    "platelet",
)
"""Class ids shared by the course npz, BloodMNIST and the PBC folder names (alphabetical)."""
