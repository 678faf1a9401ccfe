"""Classification heads on pooled backbone features (the heads of the seed reports)."""

from __future__ import annotations

from collections.abc import Sequence

from torch import nn


class MLPHead(nn.Sequential):
    """[BatchNorm] -> [Dropout] -> (Linear -> ReLU -> [Dropout]) per hidden width -> Linear.

    ``hidden=()`` is a plain linear classifier. Report A: ``input_batchnorm=True,
    input_dropout=0.3, hidden=(256,)``; the DenseNet report: ``hidden=(1024, 512),
    dropout=0.5``. The reports' L2 penalty on the dense layers is the head's weight decay
    (``optim.head_weight_decay``).
    """

    def __init__(
        self,
        in_features: int,
        num_classes: int,
        hidden: Sequence[int] = (),
        dropout: float = 0.0,
        input_dropout: float = 0.0,
        input_batchnorm: bool = False,
    ) -> None:
        layers: list[nn.Module] = []
        if input_batchnorm:
            layers.append(nn.BatchNorm1d(in_features))
        if input_dropout:
            layers.append(nn.Dropout(input_dropout))
        width = in_features
        for h in hidden:
            layers += [nn.Linear(width, h), nn.ReLU(inplace=True)]
            if dropout:
                layers.append(nn.Dropout(dropout))
            width = h
        layers.append(nn.Linear(width, num_classes))
        super().__init__(*layers)
