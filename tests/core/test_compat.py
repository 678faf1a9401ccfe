"""Each private API that bloodcells.compat fences still behaves as relied on; when a library
release changes one, the test fails with ``PrivateAPIChanged`` naming the library and version."""

from __future__ import annotations

import signal
import subprocess
import time
from collections.abc import Iterator

import numpy as np
import pytest
import torch
from torch import nn

from bloodcells.core import compat
from bloodcells.data.datamodule import ImageArrayDataset
from bloodcells.data.transforms import build_pipeline
from bloodcells.data.worker_signals import SignalSafeLoader


def test_the_changed_message_names_the_library_and_its_version():
    import optuna

    err = compat.changed("optuna", "Trial(study, frozen._trial_id)", "gone")
    assert f"optuna {optuna.__version__}" in str(err) and "Trial(study, frozen._trial_id)" in str(err)


def test_an_optuna_trial_of_another_process_is_rebuilt_and_reports():
    import optuna

    study = optuna.create_study(storage=optuna.storages.InMemoryStorage())
    study.ask()
    frozen = study.get_trials(deepcopy=False)[0]
    trial = compat.rebuild_optuna_trial(study, frozen)
    trial.report(0.5, step=0)
    assert study.get_trials(deepcopy=False)[0].intermediate_values == {0: 0.5}


def test_hydra_job_returns_overrides_and_config():
    from hydra.core.hydra_config import HydraConfig
    from hydra.core.utils import JobReturn, JobStatus

    done = JobReturn()
    done.return_value = 0.9
    done.status = JobStatus.COMPLETED
    assert compat.job_return_value(done) == 0.9
    failed = JobReturn()
    failed.return_value = ValueError("boom")
    failed.status = JobStatus.FAILED
    assert isinstance(compat.job_return_value(failed), ValueError)
    choice, interval, range_ = compat.sweep_types()
    assert isinstance(compat.parse_override("a=interval(1, 2)").value(), interval)
    assert isinstance(compat.parse_override("a=choice(x, y)").value(), choice)
    assert isinstance(compat.parse_override("a=range(1, 5)").value(), range_)
    from tests.helpers import compose_config

    cfg = compose_config("train", ["model=tiny"], "/tmp/unused")  # calls compat.set_hydra_config
    assert HydraConfig.initialized() and cfg.model.backbone == "test_efficientnet"


def test_torch_and_lightning_internals():
    base = compat.batchnorm_base()
    assert all(issubclass(c, base) for c in (nn.BatchNorm1d, nn.BatchNorm2d, nn.SyncBatchNorm))
    opt = torch.optim.SGD([nn.Parameter(torch.zeros(1))], lr=1.0)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda e: 1.0)
    compat.set_last_lr(sched, [0.25])
    assert sched.get_last_lr() == [0.25]
    from tests.helpers import tiny_classifier

    assert compat.attached_trainer(tiny_classifier()) is None


def test_the_hub_offline_flag_is_set_for_the_call_and_restored():
    from huggingface_hub import constants

    before = constants.HF_HUB_OFFLINE
    constants.HF_HUB_OFFLINE = False
    try:
        with compat.hub_offline(True):
            assert constants.HF_HUB_OFFLINE is True and compat.hub_offline_flag()
        assert constants.HF_HUB_OFFLINE is False
    finally:
        constants.HF_HUB_OFFLINE = before


@pytest.fixture
def fresh_sigchld(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """SIGCHLD as in a fresh process. torch installs its handler once per process; a
    Lightning ``fit`` earlier in this test process (its signal connector restores every
    handler it found at the start on teardown) may have put back SIG_DFL, after which torch
    never installs its handler again."""
    from torch.utils.data._utils import signal_handling

    saved = signal.getsignal(signal.SIGCHLD)
    monkeypatch.setattr(signal_handling, "_SIGCHLD_handler_set", False)
    signal.signal(signal.SIGCHLD, signal.SIG_DFL)
    yield
    signal.signal(signal.SIGCHLD, saved)


def worker_loader() -> SignalSafeLoader:
    images = np.zeros((64, 8, 8, 3), np.uint8)
    dataset = ImageArrayDataset(images, np.zeros(64, np.int64), np.arange(64), build_pipeline([]))
    return SignalSafeLoader(dataset, batch_size=2, num_workers=1)


def test_the_sigchld_wrapper_lives_only_for_the_duration_of_fit(fresh_sigchld: None):
    """Outside ``quiet_worker_sigterm`` nothing is wrapped; inside, torch's handler is; after
    it, the handler is torch's own again (or the one from before), never the wrapper."""
    before = signal.getsignal(signal.SIGCHLD)
    iter(worker_loader())  # outside fit: torch's handler (if any) stays as torch set it
    assert not hasattr(signal.getsignal(signal.SIGCHLD), "wrapped")
    with compat.quiet_worker_sigterm():
        it = iter(worker_loader())
        next(it)
        inside = signal.getsignal(signal.SIGCHLD)
        assert callable(inside) and hasattr(inside, "wrapped")  # torch's handler, wrapped
        del it
    after = signal.getsignal(signal.SIGCHLD)
    assert not hasattr(after, "wrapped")
    assert after is inside.wrapped or after == before


def kill_a_worker_and_wait() -> None:
    it = iter(worker_loader())
    next(it)
    assert callable(signal.getsignal(signal.SIGCHLD))  # torch's handler (wrapped inside fit)
    (pid,) = [w.pid for w in it._workers]
    # from another process, as a scheduler sends it: torch's workers exit quietly on their parent's
    subprocess.run(["kill", "-TERM", str(pid)], check=True)
    try:
        time.sleep(2.0)  # torch's handler runs here, in the main thread, when the worker dies
    finally:
        del it


def test_torch_reports_a_worker_ended_by_sigterm_in_the_words_compat_looks_for(fresh_sigchld: None):
    with pytest.raises(RuntimeError) as err:  # outside fit: torch raises asynchronously
        kill_a_worker_and_wait()
    assert compat.died_of_sigterm(err.value), f"torch {torch.__version__} changed its message: {err.value}"
    with compat.quiet_worker_sigterm():  # inside fit: the same death raises nothing
        kill_a_worker_and_wait()
