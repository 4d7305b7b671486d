"""Class labels from the data: digits, CIFAR-10, image folders (one sub-folder per class), .npz with 'labels'."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from ddpm.config import DataConfig
from ddpm.data import (
    CIFAR10_CLASSES,
    DataError,
    LabelledDataset,
    build_dataset,
    class_names_for,
    dataset_labels,
    digits_arrays,
)


def _png(path: Path, value: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.full((8, 8, 3), value, dtype=np.uint8)).save(path)


def test_digits_have_their_labels_and_names():
    ds = build_dataset(DataConfig(), (1, 8, 8), "train", 17)
    labels, names = dataset_labels(ds)
    assert names == tuple("0123456789") and len(labels) == len(ds)
    assert labels.tolist() == digits_arrays("train")[1].tolist()
    pairs = LabelledDataset(ds, 10)
    x, y = pairs[5]
    assert x.shape == (1, 8, 8) and y == int(labels[5]) and isinstance(y, int)
    assert ds[5].shape == (1, 8, 8)  # the dataset itself still gives images alone


def test_cifar10_labels_and_names(tmp_path):
    from test_data_cifar10 import write_folder

    ds = build_dataset(DataConfig(dataset="cifar10", path=str(write_folder(tmp_path))), (3, 32, 32), "train", 256)
    labels, names = dataset_labels(ds)
    assert names == CIFAR10_CLASSES and names[3] == "cat"
    assert labels.tolist()[:4] == [0, 1, 2, 3]  # fake batch 0: labels (0 + j) % 10


def test_folder_classes_are_the_sorted_sub_folders(tmp_path):
    for cls, value in (("zebra", 10), ("ant", 200), ("moth", 90)):
        for j in range(4):
            _png(tmp_path / cls / ("deep" if j == 3 else "") / f"{j}.png", value + j)
    (tmp_path / "empty").mkdir()  # a sub-folder without images is no class
    cfg = DataConfig(dataset="folder", path=str(tmp_path), held_out_fraction=0.5)
    train, test = (build_dataset(cfg, (3, 8, 8), split, 256) for split in ("train", "test"))
    # this split holds no 'ant' image, and still numbers the classes as the whole folder does
    assert {Path(n).relative_to(tmp_path).parts[0] for n in test.names} == {"moth", "zebra"}
    for ds in (train, test):
        labels, names = dataset_labels(ds)
        assert names == ("ant", "moth", "zebra")
        for i, name in enumerate(ds.names):
            assert names[labels[i]] == Path(name).relative_to(tmp_path).parts[0]
    assert len(train) + len(test) == 12


def test_a_folder_with_loose_images_has_no_labels(tmp_path):
    _png(tmp_path / "a" / "0.png", 1)
    _png(tmp_path / "a" / "1.png", 2)
    _png(tmp_path / "loose.png", 3)
    ds = build_dataset(DataConfig(dataset="folder", path=str(tmp_path), held_out_fraction=0.3), (3, 8, 8), "train",
                       256)
    assert ds.labels is None
    with pytest.raises(DataError, match=r"has no class labels \(1 image\(s\) lie outside the class sub-folders, "
                                        r"e\.g\. 'loose\.png'\)"):
        LabelledDataset(ds, 1)


def test_npz_labels_and_class_names(tmp_path):
    rng = np.random.default_rng(0)
    images = rng.integers(0, 256, (20, 8, 8), dtype=np.uint8)
    labels = np.arange(20) % 4
    path = tmp_path / "d.npz"
    np.savez(path, images=images, labels=labels, class_names=np.array(["a", "b", "c", "d"]))
    ds = build_dataset(DataConfig(dataset="npz", path=str(path)), (1, 8, 8), "train", 256)
    got, names = dataset_labels(ds)
    assert names == ("a", "b", "c", "d") and len(got) == len(ds) == 18
    assert class_names_for(ds, 4) == ("a", "b", "c", "d")
    with pytest.raises(DataError, match=r"model.num_classes=5, but .* has 4 classes \(a, b, c, d\)"):
        class_names_for(ds, 5)
    np.savez(path, images=images, labels=labels)  # no names: "0".."K-1", labels within K
    ds = build_dataset(DataConfig(dataset="npz", path=str(path)), (1, 8, 8), "train", 256)
    assert class_names_for(ds, 6) == ("0", "1", "2", "3", "4", "5")
    with pytest.raises(DataError, match=r"holds labels 0\.\.3, outside the model.num_classes=3 classes 0\.\.2"):
        class_names_for(ds, 3)
    np.savez(path, images=images, labels=labels, class_names=np.array(["a", "a"]))
    with pytest.raises(DataError, match="names a class twice"):
        build_dataset(DataConfig(dataset="npz", path=str(path)), (1, 8, 8), "train", 256)


def test_data_without_labels_is_a_clear_error(tmp_path):
    np.savez(tmp_path / "u.npz", images=np.zeros((10, 8, 8), dtype=np.uint8))
    ds = build_dataset(DataConfig(dataset="npz", path=str(tmp_path / "u.npz")), (1, 8, 8), "train", 256)
    with pytest.raises(DataError, match=r"has no class labels .* a class-conditional model \(model.num_classes\) "
                                        r"trains on digits, cifar10, a folder with one sub-folder per class"):
        LabelledDataset(ds, 2)
    toy = build_dataset(DataConfig(dataset="toy2d"), (2,), "train", 256)
    with pytest.raises(DataError, match="2-D toy points carry no class labels"):
        dataset_labels(toy)
