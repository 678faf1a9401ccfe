"""Staged fine-tuning: what changes in each phase, the LR of every group at every epoch,
exact resume in the middle of phase 2, DDP on 2 CPU processes, bf16 on CPU."""

from __future__ import annotations

import json
import math

import lightning.pytorch as pl
import pytest
import torch

from bloodcells.models.cpu_precision import is_depthwise
from bloodcells.models.finetune import FinetuneSchedule, Stage
from bloodcells.runs.build import build_datamodule, build_model, build_trainer
from bloodcells.runs.evaluate import evaluate
from bloodcells.runs.train import resolve_resume
from tests.helpers import compose_config, fit_with, run_train_cli
from tests.models.test_compile import GraphCount, needs_inductor

STAGED = [
    "finetune=staged",
    "finetune.stages.1.epoch=2",
    "finetune.stages.1.unfreeze=2",
    "finetune.stages.1.lr_factor=0.1",
]


class Recorder(pl.Callback):
    """Backbone/head state after every epoch and the LR of every group during it."""

    def __init__(self) -> None:
        self.states: list[dict[str, torch.Tensor]] = []
        self.lrs: list[list[float]] = []

    def on_train_start(self, trainer, module) -> None:
        self.states.append({k: v.clone() for k, v in module.state_dict().items()})

    def on_train_batch_start(self, trainer, module, batch, batch_idx) -> None:
        if batch_idx == 0:
            self.lrs.append([g["lr"] for g in trainer.optimizers[0].param_groups])

    def on_train_epoch_end(self, trainer, module) -> None:
        self.states.append({k: v.clone() for k, v in module.state_dict().items()})


def changed(before: dict, after: dict, prefix: str) -> set[str]:
    return {k for k in before if k.startswith(prefix) and not torch.equal(before[k], after[k])}


def test_stage_block_counts():
    schedule = FinetuneSchedule(
        [
            {"epoch": 0, "unfreeze": 0},
            {"epoch": 3, "unfreeze": 0.5},
            {"epoch": 5, "unfreeze": "all", "lr_factor": 0.01},
        ],
        8,
    )
    assert schedule.block_multipliers(2) == [0.0] * 8
    assert schedule.block_multipliers(3) == [0.0] * 4 + [0.1] * 4
    assert schedule.block_multipliers(9) == [0.01] * 8
    assert Stage(0, 0.3).trainable_blocks(8) == 3
    with pytest.raises(ValueError, match="must start with a stage at epoch 0"):
        FinetuneSchedule([{"epoch": 1, "unfreeze": 0}], 8)


@pytest.mark.parametrize("compile_", ["false", pytest.param("true", marks=[pytest.mark.slow, needs_inductor])])
def test_phase1_changes_only_the_head_and_phase2_only_the_chosen_blocks(train_cfg, compile_):
    cfg = train_cfg(
        *STAGED, "trainer.max_epochs=3", "callbacks=none", "sched=cosine", "aug=none", f"model.compile={compile_}"
    )
    recorder, graphs = Recorder(), GraphCount()
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    model = fit_with(cfg, recorder, graphs)
    start, after_phase1, after_phase2 = recorder.states[0], recorder.states[2], recorder.states[3]
    if compile_ == "true":  # one graph per stage, none per epoch or validation; dropped after the fit
        assert graphs.graphs == [1, 1, 2] and sorted(model.compiler.clock.steps) == [0, 1, 2]
        assert model.compiler.compiled is None and not any("_orig_mod" in key for key in model.state_dict())

    # phase 1 (epochs 0-1): backbone weights and BN running statistics bit-identical
    assert changed(start, after_phase1, "backbone.") == set()
    assert changed(start, after_phase1, "head.")
    # phase 2 (epoch 2): exactly the last 2 blocks (their weights and BN statistics) change
    trainable = {f"backbone.{n}" for block in model.blocks[-2:] for n in block}
    frozen = {f"backbone.{n}" for block in model.blocks[:-2] for n in block}
    moved = changed(after_phase1, after_phase2, "backbone.")
    assert trainable & moved == trainable
    assert not moved & frozen
    frozen_modules = {n.rsplit(".", 1)[0] for n in frozen}
    assert not any(k.rsplit(".", 1)[0] in frozen_modules for k in moved)  # frozen BN stats too
    assert any(k.endswith("running_mean") for k in moved)  # trainable BN layers did update

    # LR of every group at every epoch: head = lr * cosine(epoch), blocks = 0 or 0.1 of it
    base, max_epochs, floor = cfg.optim.lr, cfg.trainer.max_epochs, cfg.sched.min_factor
    n_blocks = len(model.blocks)
    for epoch, lrs in enumerate(recorder.lrs):
        decay = floor + (1 - floor) * 0.5 * (1 + math.cos(math.pi * epoch / max_epochs))
        blocks = [0.0] * n_blocks if epoch < 2 else [0.0] * (n_blocks - 2) + [0.1] * 2
        assert lrs == pytest.approx([base * decay] + [base * decay * m for m in blocks])


def test_plateau_decay_restarts_with_each_stage(train_cfg):
    from bloodcells.models.schedulers import StagedLR

    schedule = FinetuneSchedule([{"epoch": 0, "unfreeze": 0}, {"epoch": 3, "unfreeze": "all"}], 2)
    params = [torch.nn.Parameter(torch.zeros(1)) for _ in range(3)]
    opt = torch.optim.SGD([{"params": [p]} for p in params], lr=1.0)
    sched = StagedLR(opt, schedule, decay="plateau", plateau_patience=0, plateau_factor=0.5)
    lrs = []
    for metric in (1.0, 2.0, 3.0, 4.0, 5.0):  # never improves
        sched.step(metric)
        lrs.append([g["lr"] for g in opt.param_groups])
    assert lrs[0] == [1.0, 0.0, 0.0] and lrs[1] == [0.5, 0.0, 0.0]  # decays within stage 1
    assert lrs[2] == [1.0, 0.1, 0.1]  # epoch 3: new stage, scale back to 1
    assert lrs[3][0] == 1.0 and lrs[4][0] == 0.5


# progressive: every epoch of this 4-epoch run trains at 48 px (progress < 0.9), so the
# resumed epoch must find its size from the restored schedule length, not fall back to 96
PROGRESSIVE = "data.progressive=[[0,48],[0.9,96]]"


@pytest.mark.slow
@pytest.mark.parametrize(
    "compile_, extra",
    [("false", []), pytest.param("true", [], marks=needs_inductor), ("false", [PROGRESSIVE])],
    ids=["eager", "compiled", "progressive"],
)
def test_resume_in_the_middle_of_phase2_matches_an_uninterrupted_run(train_cfg, tmp_path, compile_, extra):
    """With the default 2 loader workers and dropout on: the resumed epochs are bit-exact
    (compiled too: the resumed run compiles afresh and must land on the same weights)."""
    common = [
        *extra,
        f"model.compile={compile_}",
        "data.num_workers=2",
        "model.drop_rate=0.2",
        *STAGED,
        "finetune.stages.1.epoch=1",
        "trainer.max_epochs=4",
        "trainer.deterministic=true",
        "sched=cosine",
        "aug=standard",
        "callbacks=default",
        "callbacks.early_stopping=null",
    ]
    full = fit_with(compose_config("train", [*FAST, *common], tmp_path / "full"))

    class Kill(pl.Callback):
        def on_train_epoch_start(self, trainer, module):
            if trainer.current_epoch == 3:
                raise KeyboardInterrupt  # Lightning's graceful shutdown path, like Ctrl-C

    killed_cfg = compose_config("train", [*FAST, *common], tmp_path / "killed")
    with pytest.raises(SystemExit):  # Lightning turns the interrupt into exit(1)
        fit_with(killed_cfg, Kill())
    # ckpt_path=last finds the newest last.ckpt among the task's earlier runs
    earlier = tmp_path / "resumed" / "train" / "runs" / "killed"
    earlier.mkdir(parents=True)
    (tmp_path / "killed" / "checkpoints").rename(earlier / "checkpoints")
    assert torch.load(earlier / "checkpoints" / "last.ckpt", weights_only=True)["epoch"] == 2
    resumed_cfg = compose_config("train", [*FAST, *common, "ckpt_path=last"], tmp_path / "resumed")
    pl.seed_everything(resumed_cfg.seed, workers=True)
    datamodule, resumed = build_datamodule(resumed_cfg), build_model(resumed_cfg)
    build_trainer(resumed_cfg).fit(
        resumed, datamodule=datamodule, ckpt_path=resolve_resume(resumed_cfg), weights_only=True
    )
    for (name, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6, msg=name)


FAST = ["model=tiny", "data.num_workers=0", "trainer.enable_progress_bar=false"]


@pytest.mark.slow
def test_ddp_cpu_two_processes_one_run_dir_same_test_metrics(tmp_path):
    out = run_train_cli("trainer=ddp_cpu", "trainer.max_epochs=2", "finetune=full", log_dir=tmp_path)
    runs = list((tmp_path / "train" / "runs").iterdir())
    assert len(runs) == 1, runs
    run = runs[0]
    assert "distributed_backend=gloo" in out.stderr and "MEMBER: 2/2" in out.stderr
    reported = json.loads((run / "metrics.json").read_text())["metrics"]
    assert reported["n"] == 96  # every test image once, no DDP padding
    ckpt = next((run / "checkpoints").glob("epoch*.ckpt"))
    single = evaluate(compose_config("evaluate", [f"ckpt_path={ckpt}", "data.num_workers=0"], tmp_path / "eval"))
    for key in ("accuracy", "balanced_accuracy", "macro_f1", "macro_auroc"):
        assert single[key] == pytest.approx(reported[key], abs=1e-9), key


def test_bf16_mixed_on_cpu_computes_the_forward_pass_in_bfloat16(train_cfg):
    """...except the depthwise convolutions, kept in float32 on CPU (``models.cpu_precision``)."""

    class DtypeRecorder(pl.Callback):
        def __init__(self) -> None:
            self.dtypes: dict[str, set[torch.dtype]] = {"head": set(), "depthwise": set(), "pointwise": set()}

        def record(self, key: str):
            return lambda mod, args, out: self.dtypes[key].add(out.dtype)

        def on_train_start(self, trainer, module) -> None:
            module.head.register_forward_hook(self.record("head"))
            for m in module.backbone.modules():
                if isinstance(m, torch.nn.Conv2d):
                    m.register_forward_hook(self.record("depthwise" if is_depthwise(m) else "pointwise"))

    recorder = DtypeRecorder()
    model = fit_with(
        train_cfg("trainer.precision=bf16-mixed", "+trainer.fast_dev_run=true", "callbacks=none"), recorder
    )
    assert recorder.dtypes == {"head": {torch.bfloat16}, "depthwise": {torch.float32}, "pointwise": {torch.bfloat16}}
    assert all(p.dtype == torch.float32 for p in model.parameters())  # mixed: weights stay fp32


def test_ema_averages_the_weights_and_clipping_bounds_the_gradient_norm(train_cfg):
    class Spy(pl.Callback):
        def __init__(self) -> None:
            self.raw: dict[str, torch.Tensor] = {}
            self.pre_clip: list[float] = []
            self.post_clip: list[float] = []

        def on_train_start(self, trainer, module) -> None:
            # Lightning runs forward, backward and clipping in the closure inside step(): the
            # gradients the update used are still there right after it
            trainer.optimizers[0].register_step_post_hook(lambda opt, *a: self.post_clip.append(grad_norm(opt)))

        def on_before_optimizer_step(self, trainer, module, optimizer) -> None:
            self.pre_clip.append(grad_norm(optimizer))

        def on_train_batch_end(self, trainer, module, outputs, batch, batch_idx) -> None:
            self.raw = {k: v.detach().clone() for k, v in module.head.state_dict().items()}

    def grad_norm(optimizer) -> float:
        grads = [p.grad.norm() for g in optimizer.param_groups for p in g["params"] if p.grad is not None]
        return float(torch.stack(grads).norm())

    cfg = train_cfg(
        "callbacks=ema",
        "callbacks.ema.update_starting_at_step=1",
        "callbacks.ema.decay=0.5",
        "callbacks.early_stopping=null",
        "callbacks.tta_ensemble=null",
        "trainer.max_epochs=1",
        "+trainer.limit_train_batches=4",
        "trainer.gradient_clip_val=0.01",
        "finetune=full",
        "optim=adamw",
        "sched.warmup_epochs=1",
    )
    spy = Spy()
    model = fit_with(cfg, spy)
    assert max(spy.pre_clip) > 0.02  # clipping had work to do
    assert max(spy.post_clip) <= 0.01 * (1 + 1e-4)  # and the optimizer only saw clipped gradients
    averaged = model.head.state_dict()  # after fit, the module holds the EMA weights
    assert any(not torch.equal(averaged[k], spy.raw[k]) for k in averaged if averaged[k].is_floating_point())
