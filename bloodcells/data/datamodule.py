"""The LightningDataModule: read, split (stratified, or the data's own split), augment, load."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import multiprocessing
from collections.abc import Callable, Sequence
from pathlib import Path

import albumentations as A
import lightning.pytorch as pl
import numpy as np
import torch
from torch.utils.data import DataLoader, Dataset

from bloodcells.cleaning.pipeline import clean_dataset
from bloodcells.core.errors import ConfigError, DataError, check_choice, check_positive
from bloodcells.core.files import replace_atomically
from bloodcells.data.exclusions import apply_exclusions
from bloodcells.data.images import ImageSet
from bloodcells.data.progressive import SizeSchedule, planned_epochs
from bloodcells.data.resize import resize_array
from bloodcells.data.sampling import EpochSampler
from bloodcells.data.split import stratified_split
from bloodcells.data.transforms import build_pipeline, to_tensor
from bloodcells.data.worker_signals import SignalSafeLoader

log = logging.getLogger(__name__)

DATA_RECORD = "BloodCellDataModule"
"""The checkpoint key under which Lightning stores the datamodule's ``state_dict``."""


def check_decisions(decided: object, n_images: int, n_classes: int) -> None:
    """A cleaning decision read back must fit the data: indices in range, known labels."""
    if not isinstance(decided, dict) or not {"removed", "relabelled", "group_of", "counts"} <= set(decided):
        raise ValueError("keys missing")
    removed, relabelled, group_of = decided["removed"], decided["relabelled"], decided["group_of"]

    def index(v: object) -> bool:
        return isinstance(v, int) and not isinstance(v, bool) and 0 <= v < n_images

    if not isinstance(removed, list) or not all(index(i) for i in removed):
        raise ValueError("removed: not image indices")
    if not isinstance(group_of, list) or len(group_of) != n_images or not all(isinstance(g, int) for g in group_of):
        raise ValueError("group_of: not one group id per image")
    if not isinstance(relabelled, dict) or not all(
        k.isdigit() and index(int(k)) and isinstance(v, int) and 0 <= v < n_classes for k, v in relabelled.items()
    ):
        raise ValueError("relabelled: not image indices and class ids")
    if not isinstance(decided["counts"], dict):
        raise ValueError("counts: not a mapping")


def read_cache(path: Path, n_images: int, n_classes: int) -> dict | None:
    """A cached cleaning decision, or None if absent, unreadable or not fitting the data
    (then recomputed). Plain JSON, checked value by value: nothing in it is called."""
    if not path.is_file():
        return None
    try:
        decided = json.loads(path.read_text())
        check_decisions(decided, n_images, n_classes)
    except (ValueError, UnicodeDecodeError) as err:
        log.warning("cleaning cache %s is corrupt (%s); recomputing", path, err)
        return None
    log.info("cleaning: reusing %s", path)
    return decided


def apply_cleaning(
    data: ImageSet, options: dict, cache_dir: str | None
) -> tuple[ImageSet, np.ndarray, np.ndarray, dict]:
    """Run (or reuse) the cleaning of ``bloodcells.clean``.

    Returns the data with corrected labels (the same image array: a memory-mapped set stays
    mapped, never copied), the indices kept, every image's near-duplicate group id (the split
    keeps each group on one side) and the counts.
    """
    cached = None
    if cache_dir:
        key = hashlib.blake2b(digest_size=16)
        key.update(b"decisions-v2")  # bump when the decision rules change
        key.update(np.ascontiguousarray(data.images).data)
        key.update(np.ascontiguousarray(data.labels).data)
        key.update(json.dumps(options, sort_keys=True).encode())
        cached = Path(cache_dir) / f"clean-{key.hexdigest()}.json"
    decided = read_cache(cached, len(data), len(data.class_names)) if cached is not None else None
    if decided is None:
        report = clean_dataset(data.images, data.labels, data.class_names, **options)
        decided = {
            "removed": report.removed,
            "relabelled": report.relabelled,
            "group_of": report.group_of,
            "counts": report.counts,
        }
        if cached is not None:
            text = json.dumps(decided)
            replace_atomically(cached, lambda tmp: Path(tmp).write_text(text))
    log.info(
        "cleaning: removed %d of %d images %s",
        len(decided["removed"]),
        len(data),
        decided["counts"].get("groups_by_decision"),
    )
    labels = data.labels.copy()
    for index, label in decided["relabelled"].items():
        labels[int(index)] = label
    keep = np.setdiff1d(np.arange(len(data)), decided["removed"])
    return dataclasses.replace(data, labels=labels), keep, np.asarray(decided["group_of"]), decided["counts"]


def split_digest(data: ImageSet, index: np.ndarray) -> str:
    """A digest of a split's members: their positions, labels and pixels."""
    digest = hashlib.blake2b(np.asarray(index, dtype=np.int64).tobytes(), digest_size=16)
    digest.update(np.ascontiguousarray(data.labels[index]).tobytes())
    for start in range(0, len(index), 1024):
        digest.update(np.ascontiguousarray(data.images[index[start : start + 1024]]).data)
    return digest.hexdigest()


MOVED_READERS = {"bloodcells.data.image_cache.read_npy": "bloodcells.data.readers.read_npy"}
"""Readers recorded by checkpoints of earlier versions under another module path."""


def canonical_source(source: dict | None) -> dict | None:
    """A recorded ``data_source`` with moved readers under today's name."""
    if not isinstance(source, dict) or source.get("reader") not in MOVED_READERS:
        return source
    return {**source, "reader": MOVED_READERS[source["reader"]]}


def same_source(a: dict, b: dict) -> bool:
    """Whether two ``data_source`` records name the same reader and files."""
    a, b = canonical_source(a), canonical_source(b)
    keys = ("reader", "path", "root", "images", "labels")
    return all(a.get(k) == b.get(k) for k in keys)


def data_source(reader: Callable[..., ImageSet]) -> dict[str, str]:
    """The reader and its file arguments (absolute paths): what a checkpoint was trained on."""
    func = getattr(reader, "func", reader)
    source = {"reader": f"{func.__module__}.{func.__qualname__}"}
    for key, value in sorted(getattr(reader, "keywords", {}).items()):
        source[key] = str(Path(value).resolve()) if key in ("path", "root", "images", "labels") else str(value)
    return source


def worker_context() -> multiprocessing.context.BaseContext:
    """The platform's standard way to start loader workers, named explicitly: inside a joblib
    (loky) job the default context is loky's, which cannot start DataLoader workers."""
    return multiprocessing.get_context(multiprocessing.get_all_start_methods()[0])


class ImageArrayDataset(Dataset):
    """Items are (uint8 CHW tensor, label, index into the full ImageSet).

    A key is a position, or ``(position, seed)`` from ``EpochSampler``: the pipeline is then
    reseeded, so each augmentation is reproducible whatever worker draws it. A third item,
    ``size`` (progressive resizing), resizes the augmented image to it.
    """

    def __init__(self, images: np.ndarray, labels: np.ndarray, index: np.ndarray, pipeline: A.Compose) -> None:
        self.images, self.labels, self.index, self.pipeline = images, labels, index, pipeline

    def __len__(self) -> int:
        return len(self.index)

    def __getitem__(self, key: int | tuple[int, ...]) -> tuple[torch.Tensor, int, int]:
        size = None
        if isinstance(key, tuple):
            key, seed, *sized = key
            self.pipeline.set_random_seed(seed)
            size = sized[0] if sized else None
        j = self.index[key]
        image = self.pipeline(image=self.images[j])["image"]
        if size is not None:
            image = resize_array(image, size)
        return to_tensor(image), int(self.labels[j]), int(j)


def array_loader(images: np.ndarray, batch_size: int) -> DataLoader:
    """Unlabelled uint8 images (N x H x W x 3) in order, through the eval pipeline (no resize)."""
    dataset = ImageArrayDataset(images, np.zeros(len(images), np.int64), np.arange(len(images)), build_pipeline([]))
    return DataLoader(dataset, batch_size=batch_size)


class BloodCellDataModule(pl.LightningDataModule):
    def __init__(
        self,
        reader: Callable[..., ImageSet],
        class_names: Sequence[str],
        image_size: int = 96,
        val_fraction: float = 0.15,
        test_fraction: float = 0.15,
        split_seed: int = 42,
        use_data_split: bool = False,
        train_transforms: Sequence[A.BasicTransform] = (),
        batch_size: int = 32,
        eval_batch_size: int = 128,
        num_workers: int = 2,
        pin_memory: bool = False,
        sampler: str = "none",
        seed: int = 0,
        clean: bool = False,
        clean_options: dict | None = None,
        cache_dir: str | None = None,
        exclude: str | None = None,
        progressive: Sequence[Sequence[float]] | None = None,
    ) -> None:
        super().__init__()
        check_choice("data.sampler", sampler, ("none", "weighted"))
        check_positive("data.batch_size", batch_size)
        if isinstance(image_size, bool) or not isinstance(image_size, int) or not 8 <= image_size <= 4096:
            raise ConfigError(f"data.image_size={image_size!r} must be an integer from 8 to 4096 (pixels)")
        check_positive("data.eval_batch_size", eval_batch_size)
        if isinstance(num_workers, bool) or not isinstance(num_workers, int) or num_workers < 0:
            raise ConfigError(f"data.num_workers={num_workers!r} must be an integer >= 0")
        self.reader = reader
        self.class_names = tuple(class_names)
        self.image_size = image_size
        self.val_fraction, self.test_fraction = val_fraction, test_fraction
        self.split_seed, self.use_data_split = split_seed, use_data_split
        self.size_schedule = SizeSchedule(progressive, image_size) if progressive else None
        """Progressive resizing: the training size by progress (None: always ``image_size``)."""
        self.epoch_sizes: dict[int, int] = {}
        """The size each epoch trained at, under progressive resizing (the time budget reads it)."""
        # under progressive resizing each key brings its size: the pipeline leaves the size as it is
        self.train_pipeline = build_pipeline(train_transforms, None if progressive else image_size)
        self.eval_pipeline = build_pipeline([], image_size)
        self.batch_size, self.eval_batch_size = batch_size, eval_batch_size
        self.num_workers, self.pin_memory = num_workers, pin_memory
        self.sampler, self.seed = sampler, seed
        self.clean, self.clean_options, self.cache_dir = clean, dict(clean_options or {}), cache_dir
        self.exclude = exclude
        """An audit.csv whose decisions (drop, relabel) apply before cleaning and splitting."""
        self.kept: np.ndarray | None = None
        self.groups: np.ndarray | None = None
        self.cleaning_counts: dict = {}
        self.data: ImageSet | None = None
        self.splits: dict[str, np.ndarray] = {}
        self.digests: dict[str, str] | None = None

    @property
    def source_name(self) -> str:
        """The file or folder the data comes from (for messages)."""
        source = data_source(self.reader)
        return source.get("path") or source.get("root") or source.get("images") or source["reader"]

    def split_definition(self) -> dict:
        """What decides the split: a model's test images are the test images of this
        definition on this data (the digests catch data that changed since)."""
        definition = {
            "split_seed": self.split_seed,
            "val_fraction": self.val_fraction,
            "test_fraction": self.test_fraction,
            "use_data_split": self.use_data_split,
            "clean": self.clean,
            "clean_options": self.clean_options,
        }
        if self.exclude:
            definition["exclude"] = str(self.exclude)
        if self.data is not None:
            if self.digests is None:  # once per run: every checkpoint save records them
                self.digests = {s: split_digest(self.data, self.splits[s]) for s in ("train", "val", "test")}
            definition["digests"] = self.digests
        return definition

    def use_split_definition(self, definition: dict) -> None:
        """Split as a checkpoint's training run split (before ``setup``)."""
        if self.data is not None:
            raise RuntimeError("use_split_definition must come before setup")
        self.split_seed, self.use_data_split = definition["split_seed"], definition["use_data_split"]
        self.val_fraction, self.test_fraction = definition["val_fraction"], definition["test_fraction"]
        self.clean, self.clean_options = definition["clean"], dict(definition["clean_options"])
        self.exclude = definition.get("exclude")

    def state_dict(self) -> dict:
        """Saved in every checkpoint: a resume checks it trains on the same data, and
        ``evaluate`` scores the split that training held out."""
        return {"source": data_source(self.reader), "split": self.split_definition()}

    def load_state_dict(self, state_dict: dict) -> None:
        """Nothing to restore: ``bloodcells.resume`` compares the source before fitting."""

    def setup(self, stage: str | None = None) -> None:
        if self.data is not None:
            return
        data = self.reader(class_names=self.class_names)
        dropped = np.zeros(0, dtype=np.int64)
        if self.exclude:
            data, dropped = apply_exclusions(data, self.exclude)
        if self.clean:
            data, self.kept, self.groups, self.cleaning_counts = apply_cleaning(
                data, self.clean_options, self.cache_dir
            )
        if len(dropped):
            kept = np.arange(len(data)) if self.kept is None else self.kept
            self.kept = np.setdiff1d(kept, dropped)
        if data.images.shape[1:3] != (self.image_size, self.image_size):
            log.warning(
                "%s: images are %dx%d; the pipeline resizes them to data.image_size=%d",
                self.source_name,
                data.images.shape[2],
                data.images.shape[1],
                self.image_size,
            )
        self.data = data
        self.splits = self.make_splits(self.data)
        sizes = {k: len(v) for k, v in self.splits.items()}
        log.info("%d images, split %s", len(self.splits["all"]), sizes)

    def make_splits(self, data: ImageSet) -> dict[str, np.ndarray]:
        """train/val/test (stratified, or the data's own), plus 'all' for external test sets:
        indices into ``data`` among the images cleaning kept."""
        kept = np.arange(len(data)) if self.kept is None else self.kept
        if self.use_data_split:
            if data.split is None:
                raise ConfigError(
                    f"data.use_data_split=true, but {self.source_name} brings no split (only MedMNIST npz does)"
                )
            splits = {s: kept[data.split[kept] == s] for s in ("train", "val", "test")}
        else:
            groups = None if self.groups is None else self.groups[kept]
            within = stratified_split(data.labels[kept], self.val_fraction, self.test_fraction, self.split_seed, groups)
            splits = {s: kept[index] for s, index in within.items()}
        return {**splits, "all": kept}

    def train_class_counts(self) -> np.ndarray:
        self.setup()
        return np.bincount(self.data.labels[self.splits["train"]], minlength=len(self.class_names))

    def dataset(self, split: str, train: bool = False) -> ImageArrayDataset:
        self.setup()
        index = self.splits[split]
        if len(index) == 0:
            hint = (
                f"the file has no '{split}_images'"
                if self.use_data_split
                else "raise data.val_fraction / data.test_fraction or add images"
            )
            raise DataError(
                f"{self.source_name}: the '{split}' split is empty ({len(self.splits['all'])} images in all); {hint}"
            )
        pipeline = self.train_pipeline if train else self.eval_pipeline
        return ImageArrayDataset(self.data.images, self.data.labels, index, pipeline)

    def loader(
        self, dataset: Dataset, batch_size: int, drop_last: bool = False, sampler: EpochSampler | None = None
    ) -> DataLoader:
        """A loader with its own generator: creating its iterator draws the workers' base seed
        from it, not from the global RNG, so dropout after a resume sees the same RNG stream as
        in an uninterrupted run (persistent workers draw once, a resumed run draws again)."""
        return SignalSafeLoader(
            dataset,
            batch_size=batch_size,
            sampler=sampler,
            num_workers=self.num_workers,
            pin_memory=self.pin_memory,
            persistent_workers=self.num_workers > 0,
            multiprocessing_context=worker_context() if self.num_workers > 0 else None,
            drop_last=drop_last,
            generator=torch.Generator().manual_seed(self.seed),
        )

    def train_dataloader(self) -> DataLoader:
        dataset = self.dataset("train", train=True)
        labels = self.data.labels[dataset.index]
        sampler = EpochSampler(
            labels,
            self.seed,
            weighted=self.sampler == "weighted",
            n_classes=len(self.class_names),
            epoch_fn=self.trainer_epoch,
            size_fn=self.train_size if self.size_schedule is not None else None,
        )
        return self.loader(dataset, self.batch_size, drop_last=len(dataset) > self.batch_size, sampler=sampler)

    def train_size(self, epoch: int) -> int:
        """The size ``epoch`` trains at: the phase of its middle step on the LR schedule's
        length (the time budget's fitted length once it has one); without a trainer, the last
        phase's size."""
        planned = planned_epochs(self.trainer) if self.trainer is not None else None
        size = self.size_schedule.epoch_size(epoch, planned) if planned else self.image_size
        if self.epoch_sizes.get(epoch - 1) != size:  # the first epoch, a resumed one, or a new phase
            log.info("progressive resizing (%s): epoch %d trains at %d px", self.size_schedule, epoch + 1, size)
        self.epoch_sizes[epoch] = size
        return size

    def trainer_epoch(self) -> int | None:
        """The epoch the trainer is about to run, or None without a trainer.

        Lightning's own ``set_epoch`` value (epochs processed): on resume it is already the
        resumed epoch when the loader iterator is built, while ``current_epoch`` lags by one.
        """
        return self.trainer.fit_loop.epoch_progress.current.processed if self.trainer is not None else None

    def val_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("val"), self.eval_batch_size)

    def test_dataloader(self) -> DataLoader:
        return self.loader(self.dataset("test"), self.eval_batch_size)

    def summary(self) -> dict:
        """Images per class and split, and the cleaning counts (for the run report)."""
        self.setup()
        counts = []
        for c, name in enumerate(self.class_names):
            row = {"class": name}
            for split in ("train", "val", "test"):
                row[split] = int(np.sum(self.data.labels[self.splits[split]] == c))
            counts.append(row)
        counts.append({"class": "all", **{s: int(len(self.splits[s])) for s in ("train", "val", "test")}})
        return {"counts": counts, "cleaning": self.cleaning_counts, "source": self.source_name}

    def eval_images(self, index: np.ndarray) -> np.ndarray:
        """The images at ``index`` through the eval pipeline (uint8 N x H x W x 3)."""
        self.setup()
        return np.stack([self.eval_pipeline(image=a)["image"] for a in self.data.images[index]])

    def sites(self, index: np.ndarray) -> list[str] | None:
        """The source (site, dataset) of each image, when the data names them."""
        return None if self.data.site is None else [str(self.data.site[i]) for i in index]

    def sources(self, index: np.ndarray) -> list[str]:
        return [self.data.sources[i] for i in index]
