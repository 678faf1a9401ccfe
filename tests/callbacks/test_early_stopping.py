"""patience=auto: early stopping's patience sized to the validation split."""

from __future__ import annotations

import pytest

from bloodcells.callbacks.early_stopping import StagedEarlyStopping, patience_for
from bloodcells.core.errors import ConfigError
from bloodcells.runs.build import build_datamodule, build_trainer
from tests.helpers import compose_config


def test_patience_grows_as_the_validation_split_shrinks():
    # 4 * sqrt(1000 / n), rounded up, between 4 and 15
    assert patience_for(2049) == 4 and patience_for(1000) == 4
    assert patience_for(250) == 8
    assert patience_for(96) == 13
    assert patience_for(10) == 15


def test_auto_is_resolved_from_the_datamodule_at_setup(tmp_path):
    cfg = compose_config("train", ["model=tiny", "data.num_workers=0"], tmp_path)
    trainer = build_trainer(cfg)
    stopper = next(c for c in trainer.callbacks if isinstance(c, StagedEarlyStopping))
    assert stopper.auto_patience
    datamodule = build_datamodule(cfg)
    trainer.datamodule = datamodule  # what fit attaches
    stopper.setup(trainer, None, "fit")
    assert stopper.patience == patience_for(len(datamodule.splits["val"])) == 13  # the sample: 96 images


@pytest.mark.parametrize("bad", [-1, "soon", 2.5, True])
def test_a_bad_patience_is_named(bad):
    with pytest.raises(ConfigError, match="patience"):
        StagedEarlyStopping(monitor="val/loss", patience=bad)
