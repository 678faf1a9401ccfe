"""Each reader on small files the tests make, and each bad input with its message."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from bloodcells import CLASS_NAMES
from bloodcells.core.errors import DataError
from bloodcells.data.readers import read_folder, read_medmnist, read_npz, read_unlabelled


def save_npz(path: Path, **arrays) -> Path:
    np.savez(path, **arrays)
    return path


def make_tree(
    root: Path, images_per_class: int = 2, classes=CLASS_NAMES[:3], size: int = 24, mode: str = "RGB"
) -> Path:
    rng = np.random.default_rng(1)
    for c in classes:
        (root / c).mkdir(parents=True)
        for i in range(images_per_class):
            arr = rng.integers(0, 256, (size, size, 3), dtype=np.uint8)
            Image.fromarray(arr).convert(mode).save(root / c / f"{c}_{i}.png")
    return root


def test_npz_reads_labels_n_by_1_and_n(tmp_path, make_images):
    images = make_images(6)
    for labels in (np.arange(6).reshape(6, 1), np.arange(6)):
        data = read_npz(save_npz(tmp_path / "a.npz", images=images, labels=labels))
        assert data.images.shape == (6, 32, 32, 3) and data.images.dtype == np.uint8
        assert data.labels.tolist() == list(range(6))
        assert data.sources[2] == "a.npz[2]"


@pytest.mark.parametrize(
    "arrays, message",
    [
        ({"labels": np.zeros(3)}, "missing key 'images'"),
        ({"images": np.zeros((3, 8, 8, 3), np.uint8)}, "missing key 'labels'"),
        ({"images": np.zeros((3, 8, 8, 3), np.float32), "labels": np.zeros(3, int)}, "must be uint8"),
        ({"images": np.zeros((3, 8, 8, 5), np.uint8), "labels": np.zeros(3, int)}, "1, 3 or 4 channels"),
        ({"images": np.zeros((3, 8), np.uint8), "labels": np.zeros(3, int)}, "must be N x H x W x 3"),
        ({"images": np.zeros((3, 8, 8, 3), np.uint8), "labels": np.zeros(4, int)}, "3 images but 4 labels"),
        (
            {"images": np.zeros((3, 8, 8, 3), np.uint8), "labels": np.array([0, 8, 1])},
            "label 8 at index 1 is outside the class range 0..7",
        ),
        ({"images": np.zeros((3, 8, 8, 3), np.uint8), "labels": np.array([0, -1, 1])}, "label -1 at index 1"),
        ({"images": np.zeros((3, 8, 8, 3), np.uint8), "labels": np.eye(3, 8)}, "labels must have shape N or N x 1"),
        ({"images": np.zeros((0, 8, 8, 3), np.uint8), "labels": np.zeros(0, int)}, "holds no images"),
    ],
)
def test_npz_bad_input_names_file_and_problem(tmp_path, arrays, message):
    path = save_npz(tmp_path / "bad.npz", **arrays)
    with pytest.raises(DataError, match="bad.npz") as err:
        read_npz(path)
    assert message in str(err.value)


def test_npz_not_a_zip_and_missing_file(tmp_path):
    junk = tmp_path / "junk.npz"
    junk.write_bytes(b"not an npz")
    with pytest.raises(DataError, match="junk.npz: not an .npz file") as err:
        read_npz(junk)
    assert "allow_pickle" not in str(err.value)
    with pytest.raises(DataError, match="nothere.npz: file not found"):
        read_npz(tmp_path / "nothere.npz")


def test_npz_grayscale_and_rgba_are_converted(tmp_path, make_images):
    gray = make_images(2, channels=None)
    data = read_npz(save_npz(tmp_path / "g.npz", images=gray, labels=np.array([0, 1])))
    assert data.images.shape == (2, 32, 32, 3)
    assert np.array_equal(data.images[..., 0], gray) and np.array_equal(data.images[..., 2], gray)
    rgba = make_images(2, channels=4)
    data = read_npz(save_npz(tmp_path / "r.npz", images=rgba, labels=np.array([0, 1])))
    assert np.array_equal(data.images, rgba[..., :3])


def test_medmnist_keeps_official_split(tmp_path, make_images):
    arrays = {}
    for split, n in (("train", 5), ("val", 2), ("test", 3)):
        arrays[f"{split}_images"] = make_images(n)
        arrays[f"{split}_labels"] = (np.arange(n) % 8).reshape(n, 1)
    data = read_medmnist(save_npz(tmp_path / "bloodmnist.npz", **arrays))
    assert len(data) == 10
    assert data.split.tolist() == ["train"] * 5 + ["val"] * 2 + ["test"] * 3
    assert data.sources[5] == "bloodmnist.npz:val[0]"
    assert read_medmnist(tmp_path / "bloodmnist.npz", keep_split=False).split is None


def test_medmnist_bad_input(tmp_path, make_images):
    path = save_npz(tmp_path / "m.npz", images=make_images(2), labels=np.zeros(2, int))
    with pytest.raises(DataError, match="m.npz: missing key 'train_images'"):
        read_medmnist(path)
    path = save_npz(tmp_path / "m2.npz", train_images=make_images(2), train_labels=np.array([0, 9]))
    with pytest.raises(DataError, match=r"m2.npz \[train\]: label 9 at index 1"):
        read_medmnist(path)
    path = save_npz(tmp_path / "m3.npz", train_images=make_images(2))
    with pytest.raises(DataError, match="m3.npz: missing key 'train_labels'"):
        read_medmnist(path)


def test_folder_reads_class_ids_from_names(tmp_path):
    root = make_tree(tmp_path / "tree", classes=("eosinophil", "platelet"))
    data = read_folder(root)
    assert data.labels.tolist() == [1, 1, 7, 7]
    assert data.sources[0] == "eosinophil/eosinophil_0.png"
    assert data.images.shape == (4, 24, 24, 3)


def test_folder_bad_inputs(tmp_path):
    root = make_tree(tmp_path / "t1")
    (root / "ig").mkdir()
    with pytest.raises(DataError, match=r"t1/ig: class folder holds no images"):
        read_folder(root)

    root = make_tree(tmp_path / "t2")
    (root / "tumour").mkdir()
    with pytest.raises(DataError, match=r"class folders \['tumour'\] are not among the class names"):
        read_folder(root)

    root = make_tree(tmp_path / "t3")
    good = (root / "basophil" / "basophil_0.png").read_bytes()
    (root / "basophil" / "broken.png").write_bytes(good[: len(good) // 2])
    with pytest.raises(DataError, match=r"broken.png: unreadable or truncated image file"):
        read_folder(root)

    root = make_tree(tmp_path / "t4")
    (root / "basophil" / "text.jpg").write_text("hello")
    with pytest.raises(DataError, match=r"text.jpg: not an image"):
        read_folder(root)

    with pytest.raises(DataError, match="folder not found"):
        read_folder(tmp_path / "missing")


def test_folder_mixed_sizes_refused_or_resized(tmp_path):
    root = make_tree(tmp_path / "t", classes=("basophil",))
    Image.new("RGB", (40, 30), "red").save(root / "basophil" / "big.png")
    with pytest.raises(DataError, match=r"big.png: image size 40x30 differs .* set data.image_size"):
        read_folder(root)
    data = read_folder(root, image_size=16)
    assert data.images.shape == (3, 16, 16, 3)


def test_folder_grayscale_and_rgba_converted(tmp_path):
    root = make_tree(tmp_path / "g", classes=("basophil",), mode="L")
    make_tree(tmp_path / "g", classes=("ig",), mode="RGBA")
    data = read_folder(root)
    assert data.images.shape == (4, 24, 24, 3)
    gray = data.images[data.labels == 0]
    assert np.array_equal(gray[..., 0], gray[..., 1])


def test_unlabelled_inputs(tmp_path, make_images):
    root = make_tree(tmp_path / "tree")
    images, sources = read_unlabelled(root)
    assert len(images) == 6 and sources[0] == "basophil/basophil_0.png"
    images, sources = read_unlabelled(root / "erythroblast" / "erythroblast_1.png")
    assert images.shape == (1, 24, 24, 3) and sources == ["erythroblast_1.png"]
    images, sources = read_unlabelled(save_npz(tmp_path / "x.npz", images=make_images(3)))
    assert len(images) == 3 and sources[1] == "x.npz[1]"
    with pytest.raises(DataError, match="file not found"):
        read_unlabelled(tmp_path / "none.png")


def test_an_image_over_the_pixel_cap_is_refused_with_one_message_and_no_pil_warning(tmp_path):
    import warnings

    from bloodcells.data.images import load_image

    huge = tmp_path / "huge.png"
    Image.new("RGB", (10_000, 10_000), (200, 150, 200)).save(huge)  # 100 MP: over PIL's 89-MP warning line
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with pytest.raises(DataError, match="huge.png: 10000x10000 image .* larger than the 40 megapixels"):
            load_image(huge, max_pixels=40_000_000)
    assert not [w for w in caught if issubclass(w.category, Image.DecompressionBombWarning)]
