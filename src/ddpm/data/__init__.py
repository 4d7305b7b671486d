"""Datasets of x0 in [-1, 1]: digits, CIFAR-10, image folders, LSUN LMDB, .npz files and 2-D toy data.

``dataset_for(run_config, split)`` (or ``build_dataset(data_config, shape, split, levels)``) is the entry
point; items are images alone, and ``LabelledDataset`` pairs them with the labels a dataset knows
(``ddpm.data.labels``); ``random_flip`` is the trainer's augmentation; ``to_levels`` / ``from_levels`` map
[-1, 1] to integer levels and back.
"""

from .base import ArrayImageDataset, PointDataset, held_out_indices
from .build import build_dataset, dataset_for
from .cifar10 import CIFAR10_MD5, CIFAR10_URL, RestrictedUnpickler, load_cifar10, safe_unpickle
from .digits import DIGITS_LEVELS, digits_arrays, digits_dataset
from .errors import DataError
from .folder import IMAGE_EXTENSIONS, ImageFolderDataset
from .labels import CIFAR10_CLASSES, DIGITS_CLASSES, LabelledDataset, class_names_for, dataset_labels
from .levels import from_levels, requantize, to_levels
from .lsun import LMDBImageDataset
from .npz import load_npz
from .toy2d import TOY2D_RADIUS, TOY2D_SIZES, TOY2D_STD, toy2d_centers, toy2d_log_prob, toy2d_sample
from .transforms import random_flip

__all__ = [
    "ArrayImageDataset", "CIFAR10_CLASSES", "CIFAR10_MD5", "CIFAR10_URL", "DIGITS_CLASSES", "DIGITS_LEVELS",
    "DataError", "IMAGE_EXTENSIONS", "ImageFolderDataset", "LMDBImageDataset", "LabelledDataset", "PointDataset",
    "RestrictedUnpickler", "TOY2D_RADIUS", "TOY2D_SIZES", "TOY2D_STD", "build_dataset", "class_names_for",
    "dataset_for", "dataset_labels", "digits_arrays", "digits_dataset", "from_levels", "held_out_indices",
    "load_cifar10", "load_npz", "random_flip", "requantize", "safe_unpickle", "to_levels", "toy2d_centers",
    "toy2d_log_prob", "toy2d_sample",
]
