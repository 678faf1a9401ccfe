"""The LightningModule: a timm backbone, a head, a loss, staged fine-tuning and metrics.

The checkpoint carries everything prediction needs (class names, image size, backbone and
head config in the hyperparameters, as plain values that name no code (checked by
``bloodcells.models.hparams``) so that it loads with ``weights_only=True`` and builds nothing
the file names; input mean/std as buffers), so ``bloodcells.checkpoints.load_classifier``
rebuilds the model with no data or config at hand. The model takes uint8 images and
normalises them itself.
"""

from __future__ import annotations

import logging
import math
from typing import Any

import lightning.pytorch as pl
import torch
from omegaconf import DictConfig, ListConfig, OmegaConf

from bloodcells.core.compat import attached_trainer
from bloodcells.data.datamodule import DATA_RECORD
from bloodcells.models.backbones import backbone_norm, create_backbone
from bloodcells.models.compiled import TrainingCompiler
from bloodcells.models.cpu_precision import cpu_flags, keep_depthwise_float32, precision_advice
from bloodcells.models.finetune import FinetuneSchedule, backbone_blocks, batchnorm_blocks
from bloodcells.models.heads import MLPHead
from bloodcells.models.hparams import check_hparams
from bloodcells.models.losses import build_loss, class_weights
from bloodcells.models.metrics import validation_metrics
from bloodcells.models.mixing import BatchMixer
from bloodcells.models.ood import OODScorer
from bloodcells.models.optimizers import make_optimizer
from bloodcells.models.schedulers import StagedLR, steps_per_epoch
from bloodcells.models.stain_norm import STAIN_NORMS

log = logging.getLogger("bloodcells.train")


def to_plain(value: Any) -> Any:
    """OmegaConf containers (at any depth) -> dicts and lists: checkpoints hold only plain types."""
    if isinstance(value, (DictConfig, ListConfig)):
        return OmegaConf.to_container(value, resolve=True)
    if isinstance(value, dict):
        return {k: to_plain(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [to_plain(v) for v in value]
    return value


class CellClassifier(pl.LightningModule):
    def __init__(
        self,
        backbone: str,
        head: dict,
        class_names: list[str],
        image_size: int,
        optim: dict,
        sched: dict,
        loss: dict,
        finetune: dict,
        pretrained: bool = True,
        weights: str | None = None,
        drop_rate: float = 0.0,
        drop_path_rate: float = 0.0,
        channels_last: bool = True,
        stain_norm: str = "none",
        compile: bool | str = False,
        mix: dict | None = None,
    ) -> None:
        super().__init__()
        head, class_names, optim, sched, loss, finetune, mix = map(
            to_plain, (head, class_names, optim, sched, loss, finetune, mix)
        )
        check_hparams(
            dict(
                backbone=backbone,
                head=head,
                class_names=class_names,
                image_size=image_size,
                optim=optim,
                sched=sched,
                loss=loss,
                finetune=finetune,
                pretrained=pretrained,
                weights=weights,
                drop_rate=drop_rate,
                drop_path_rate=drop_path_rate,
                channels_last=channels_last,
                stain_norm=stain_norm,
                compile=compile,
                mix=mix,
            )
        )
        self.save_hyperparameters()
        self.calibration: dict = {}
        """Temperatures fitted after training, per TTA key (see ``checkpoints.write_calibration``)."""
        self.data_record: dict = {}
        """The training data's source and split definition, as a checkpoint records them."""
        self.ood: OODScorer | None = None
        """The foreign-image score fitted after training (``checkpoint["ood"]``), if any."""
        self.checkpoint_path: str | None = None
        """The file these weights were loaded from, if any (set by ``load_classifier``)."""
        self.class_names = list(class_names)
        self.backbone = create_backbone(backbone, pretrained, weights, drop_rate, drop_path_rate)
        self.memory_format = torch.channels_last if channels_last else torch.contiguous_format
        self.backbone.to(memory_format=self.memory_format)
        keep_depthwise_float32(self.backbone)  # CPU bf16-mixed: faster than fp32 with AMX, not slower
        mean, std = backbone_norm(self.backbone)
        self.stain = STAIN_NORMS[stain_norm]() if stain_norm != "none" else None
        """Stain normalisation to the training split's LAB statistics (a buffer in the checkpoint)."""
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1) * 255)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1) * 255)
        self.head = MLPHead(self.backbone.num_features, len(class_names), **head)
        self.criterion = build_loss(**loss)
        self.mixer = BatchMixer(**(mix or {}))
        self.register_buffer("class_weight", torch.ones(len(class_names)))
        self.blocks = backbone_blocks(self.backbone)
        self.block_bns = batchnorm_blocks(self.backbone, self.blocks)
        self.schedule = FinetuneSchedule(finetune["stages"], len(self.blocks))
        self.val_metrics = validation_metrics(len(class_names))
        self.compiler = TrainingCompiler(compile)
        """``model.compile`` during a fit (``models.compiled``): a plain object, so the compiled
        callable is no registered child and state_dict and checkpoints are the eager module's."""

    # --- model -------------------------------------------------------------------------
    def features(self, images: torch.Tensor) -> torch.Tensor:
        """Pooled backbone features (N x D) of uint8 (or 0-255 float) images, N x 3 x H x W."""
        x = images.float() if self.stain is None else self.stain(images.float())
        x = ((x - self.mean) / self.std).contiguous(memory_format=self.memory_format)
        return (self.compiler.backbone(self.backbone) if self.training else self.backbone)(x)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """Logits for uint8 (or 0-255 float) images, N x 3 x H x W."""
        return self.head(self.features(images))

    def view_scores(self, images: torch.Tensor, tta: Any) -> tuple[torch.Tensor, torch.Tensor | None]:
        """Logits of every view of ``tta`` (an ``inference.tta.TTA``) for N images at the
        model's input size (V x N x K, float), and the identity view's foreign-image score (N),
        or None without one; the features are computed once for both."""
        n = images.shape[0]
        views = tta.expand(images)
        if self.ood is None:
            return self(views).float().reshape(tta.n_views, n, -1), None
        feats = self.features(views)
        logits = self.head(feats).float()
        return logits.reshape(tta.n_views, n, -1), self.ood(images, feats[:n], logits[:n])

    def frozen_blocks(self, epoch: int) -> list[bool]:
        return [m == 0 for m in self.schedule.block_multipliers(epoch)]

    def apply_freezing(self, epoch: int) -> None:
        """Freeze the blocks that the stage at ``epoch`` holds fixed (grads and BN stats)."""
        frozen = self.frozen_blocks(epoch)
        params = dict(self.backbone.named_parameters())
        for is_frozen, names in zip(frozen, self.blocks):
            for name in names:
                params[name].requires_grad_(not is_frozen)
        self._set_bn_modes(frozen)

    def _set_bn_modes(self, frozen: list[bool]) -> None:
        if not self.hparams.finetune.get("freeze_bn", True):
            return
        for is_frozen, bns in zip(frozen, self.block_bns):
            for bn in bns:
                bn.train(self.training and not is_frozen)

    def train(self, mode: bool = True) -> CellClassifier:
        """Lightning calls ``train()`` after every validation; keep frozen BN in eval."""
        super().train(mode)
        if mode and attached_trainer(self) is not None:
            self._set_bn_modes(self.frozen_blocks(self.current_epoch))
        return self

    # --- training ----------------------------------------------------------------------
    def setup(self, stage: str) -> None:
        if stage == "fit":
            dm = self.trainer.datamodule
            weights = class_weights(dm.train_class_counts(), self.criterion.class_weights)
            if weights is not None:
                self.class_weight.copy_(weights)
            if self.stain is not None:  # the reference: the training split's stain
                self.stain.fit_reference(dm.data.images[dm.splits["train"]])

    def on_train_epoch_start(self) -> None:
        self.apply_freezing(self.current_epoch)
        self.train(True)
        self.log("finetune/phase", float(self.schedule.phase(self.current_epoch)), sync_dist=False)

    def loss(self, logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        weight = self.class_weight if self.criterion.class_weights not in (None, "none") else None
        return self.criterion(logits, targets, weight=weight)

    def training_loss(self, images: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        """The loss of one training batch, MixUp/CutMix applied when ``mix`` is on."""
        mixed = self.mixer(images, targets)
        if mixed is None:
            return self.loss(self(images), targets)
        logits = self(mixed.images)
        return mixed.lam * self.loss(logits, targets) + (1 - mixed.lam) * self.loss(logits, mixed.partner_targets)

    def training_step(self, batch: tuple, batch_idx: int) -> torch.Tensor:
        images, targets, _ = batch
        loss = self.training_loss(images, targets)
        self.log("train/loss", loss, on_step=False, on_epoch=True, prog_bar=True)
        return loss

    def validation_step(self, batch: tuple, batch_idx: int) -> None:
        images, targets, _ = batch
        logits = self(images)
        self.log("val/loss", self.loss(logits, targets), on_epoch=True, prog_bar=True, sync_dist=True)
        self.val_metrics.update(logits, targets)

    def on_validation_epoch_end(self) -> None:
        self.log_dict({f"val/{k}": v for k, v in self.val_metrics.compute().items()}, prog_bar=True)
        self.val_metrics.reset()

    # --- optimisation ------------------------------------------------------------------
    def param_groups(self) -> list[dict]:
        """Head first, then one group per backbone block; fixed for the whole run."""
        params = dict(self.backbone.named_parameters())
        groups = [{"params": list(self.head.parameters()), "name": "head"}]
        groups += [{"params": [params[n] for n in names], "name": f"block{i}"} for i, names in enumerate(self.blocks)]
        return groups

    def build_optimizer(self) -> torch.optim.Optimizer:
        return make_optimizer(self.param_groups(), **self.hparams.optim)

    def configure_optimizers(self) -> dict:
        optimizer = self.build_optimizer()
        max_epochs = self.trainer.max_epochs if self.trainer.max_epochs and self.trainer.max_epochs > 0 else 1
        scheduler = StagedLR(optimizer, self.schedule, max_epochs=max_epochs, **self.hparams.sched)
        config = {"scheduler": scheduler, "interval": scheduler.interval}
        if scheduler.decay == "plateau":
            config.update(monitor=scheduler.monitor, reduce_on_plateau=True)
        return {"optimizer": optimizer, "lr_scheduler": config}

    def on_train_start(self) -> None:
        self._set_up_schedule()
        self._set_up_compile()
        advice = precision_advice(str(self.trainer.precision), self.device.type, cpu_flags())
        if advice and self.trainer.is_global_zero:
            log.info("%s", advice)

    def _set_up_schedule(self) -> None:
        """A per-step schedule learns the epoch length here, once the train loader is sized
        (step 0 is epoch 0 whatever the length; a resumed scheduler brings the same value).
        Sizing it in ``configure_optimizers`` (``estimated_stepping_batches`` sets up the
        loaders before the checkpoint is restored) broke the bit-exact resume test."""
        scheduler = self.lr_schedulers()
        steps = steps_per_epoch(self.trainer)
        if isinstance(scheduler, StagedLR) and scheduler.interval == "step" and steps is not None:
            scheduler.set_steps_per_epoch(steps)

    def _set_up_compile(self) -> None:
        """Decide ``model.compile`` for this fit (after a resume too) and log why."""
        steps, epochs = steps_per_epoch(self.trainer), self.trainer.max_epochs
        if steps is not None and epochs is not None and epochs >= 0:
            planned = steps * epochs
        else:  # an unsized loader or no epoch limit: as long as it takes
            planned = math.inf
        decision = self.compiler.start(self.backbone, self.device.type, planned)
        if self.trainer.is_global_zero:
            log.info("%s", decision.reason)

    def on_train_batch_start(self, batch: Any, batch_idx: int) -> None:
        keep = self.compiler.step_start(self.backbone, self.current_epoch, batch_idx, self._rank_zero_says)
        if keep is not None:  # auto's trial has ended: rank 0's measurement decides for all
            line = self.compiler.settle(self._rank_zero_says(keep))
            if self.trainer.is_global_zero:
                log.info("%s", line)

    def _rank_zero_says(self, answer: bool) -> bool:
        return bool(self.trainer.strategy.broadcast(answer, src=0))

    def on_train_epoch_end(self) -> None:
        if self.trainer.is_global_zero:
            self.compiler.clock.log_epoch(self.current_epoch)

    def on_fit_end(self) -> None:
        """Validation, the TTA comparison and every later use run the eager module."""
        self.compiler.stop()

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        checkpoint["compile"] = self.compiler.state()

    def lr_scheduler_step(self, scheduler: StagedLR, metric: Any) -> None:
        scheduler.step(metric)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        self.calibration = dict(checkpoint.get("calibration", {}))
        self.data_record = dict(checkpoint.get(DATA_RECORD, {}))
        self.compiler.load_state(checkpoint.get("compile", {}))

    def on_before_optimizer_step(self, optimizer: torch.optim.Optimizer) -> None:
        """Frozen groups get no update at all: no weight decay, no optimizer-state drift."""
        for group in optimizer.param_groups:
            if group["lr"] == 0:
                for p in group["params"]:
                    p.grad = None
