"""Class labels of a dataset, for class-conditional training and the conditional bound.

A dataset's ``__getitem__`` gives images alone, whatever its kind, so unconditional code never sees a label. A
dataset that knows its labels holds them as attributes: ``labels`` (N,) int64 and ``class_names`` (K names, or
None when the source names none: an .npz without ``class_names``); ``no_labels`` says why a dataset has none.
``labelled`` pairs images with labels for the trainer, checked against the model's number of classes.
"""

from __future__ import annotations

import numpy as np
from torch import Tensor
from torch.utils.data import Dataset

from .errors import DataError

# CIFAR-10's classes in label order (the archive's batches.meta "label_names")
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
DIGITS_CLASSES = tuple(str(d) for d in range(10))


def dataset_labels(ds: Dataset) -> tuple[np.ndarray, tuple[str, ...] | None]:
    """(labels (N,) int64, class names or None) of a dataset; a DataError naming the dataset when it has none."""
    labels = getattr(ds, "labels", None)
    if labels is None:
        why = getattr(ds, "no_labels", "its source holds no class labels")
        raise DataError(f"{ds!r} has no class labels ({why}); a class-conditional model (model.num_classes) "
                        "trains on digits, cifar10, a folder with one sub-folder per class, or an .npz with "
                        "'labels'")
    return np.asarray(labels, dtype=np.int64), getattr(ds, "class_names", None)


def class_names_for(ds: Dataset, num_classes: int) -> tuple[str, ...]:
    """The dataset's K class names, checked against ``num_classes`` and its labels ("0".."K−1" if it names none)."""
    labels, names = dataset_labels(ds)
    if names is not None and len(names) != num_classes:
        shown = ", ".join(names[:12]) + (", …" if len(names) > 12 else "")
        raise DataError(f"model.num_classes={num_classes}, but {ds!r} has {len(names)} classes ({shown})")
    if labels.size and (labels.min() < 0 or labels.max() >= num_classes):
        raise DataError(f"{ds!r} holds labels {int(labels.min())}..{int(labels.max())}, outside the "
                        f"model.num_classes={num_classes} classes 0..{num_classes - 1}")
    return tuple(names) if names is not None else tuple(str(k) for k in range(num_classes))


class LabelledDataset(Dataset[tuple[Tensor, int]]):
    """(x₀, label) items of an image dataset and its labels: what a class-conditional run trains on."""

    def __init__(self, images: Dataset[Tensor], num_classes: int) -> None:
        self.images = images
        self.class_names = class_names_for(images, num_classes)
        self.labels = dataset_labels(images)[0]
        if len(self.labels) != len(images):  # type: ignore[arg-type]
            raise DataError(f"{images!r} has {len(images)} images but {len(self.labels)} labels")  # type: ignore[arg-type]

    def __len__(self) -> int:
        return len(self.labels)

    def __getitem__(self, i: int) -> tuple[Tensor, int]:
        return self.images[i], int(self.labels[i])

    def __repr__(self) -> str:
        return f"LabelledDataset({self.images!r}, {len(self.class_names)} classes)"
