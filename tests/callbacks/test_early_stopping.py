"""patience=auto: early stopping's patience sized to the validation split."""

from __future__ import annotations

import logging

import pytest

from bloodcells.callbacks.early_stopping import StagedEarlyStopping, patience_for
from bloodcells.core.errors import ConfigError
from bloodcells.runs.build import build_datamodule, build_trainer
from tests.helpers import compose_config, fit_with


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


def test_the_epoch_that_ends_the_run_is_logged_with_its_reason(train_cfg, caplog):
    """A constant metric never improves: with patience 1 the run ends after its second epoch
    of five, and the log says so (a time-budgeted run otherwise just shows fewer epochs)."""
    cfg = train_cfg(
        "trainer.max_epochs=5",
        "callbacks.time_budget=null",
        "callbacks.tta_ensemble=null",
        "callbacks.early_stopping.monitor=finetune/phase",  # 0.0 every epoch under finetune=full
        "callbacks.early_stopping.patience=1",
    )
    with caplog.at_level(logging.INFO, logger="bloodcells.callbacks.early_stopping"):
        model = fit_with(cfg)
    assert model.current_epoch == 2  # stopped after epochs 0 and 1
    said = [r.getMessage() for r in caplog.records if "has not improved" in r.getMessage()]
    assert said == [
        "early stopping: finetune/phase has not improved for 1 epoch(s) (best 0.0000); training ends after epoch 2 "
        "of 5 (callbacks.early_stopping=null trains the planned length)"
    ]
