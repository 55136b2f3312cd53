"""cnnrt.train: train small CNNs in compiled kernels and save them as cnnrt models.

Two ways in:

* :func:`fit` trains a built-in architecture on NumPy arrays and returns the
  trained network::

      import cnnrt.train as ct
      net = ct.fit(x, y, arch="lenet", epochs=20)      # x (N, C, H, W), y (N,)
      net.save("model.h5", labels=["cat", "dog"])       # loads with cnnrt.load

* :class:`Sequential` builds a network from layers (:class:`Conv2d`,
  :class:`Dense`, :class:`MaxPool2d`, :class:`AvgPool2d`, :class:`ReLU`,
  :class:`Dropout`, :class:`BatchNorm2d`, :class:`Flatten`) and has
  ``fit``, ``evaluate``, ``predict`` and ``save``.

Every forward and backward pass runs in ``cnnrt._train`` (Cython, nogil,
OpenMP).  The ``cnnrt-train`` command (``cnnrt.train.cli``) trains from an
image folder or the bundled digits and writes a model file with labels,
preprocessing and provenance.
"""
from typing import Optional, Sequence

import numpy as np

from .archs import ARCHITECTURES, DEFAULT_ARCH, build_layers
from .checkpoint import CheckpointError, load_checkpoint
from .layers import (AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, Layer, MaxPool2d,
                     ReLU, SoftmaxCrossEntropy)
from .network import Augment, History, Sequential
from .optim import SGD, Adam, LRSchedule

__all__ = [
    "fit", "Sequential", "History", "Augment", "Conv2d", "Dense", "MaxPool2d", "AvgPool2d",
    "ReLU", "Dropout", "BatchNorm2d", "Flatten", "Layer", "SoftmaxCrossEntropy", "SGD", "Adam",
    "LRSchedule", "ARCHITECTURES", "DEFAULT_ARCH", "build_layers", "CheckpointError",
    "load_checkpoint",
]


def fit(x, y, arch: str = DEFAULT_ARCH, epochs: int = 20, batch_size: int = 64,
        lr: Optional[float] = None, optimizer: str = "adam", seed: int = 0,
        validation_split: float = 0.0, validation_data=None, labels: Optional[Sequence[str]] = None,
        threads: Optional[int] = None, **kwargs) -> Sequential:
    """Train the built-in architecture ``arch`` on images ``x`` with labels ``y``.

    ``x``: (N, C, H, W), or (N, H, W) for one channel, any real dtype (the
    values are used as given: scale them as you will scale inputs later);
    ``y``: (N,) class indices 0..n_classes-1 (n_classes = len(labels) when
    given, else max(y) + 1).  Other keyword arguments go to
    :meth:`Sequential.fit` (weight_decay, schedule, augment, progress, ...).
    Returns the trained :class:`Sequential`; its ``history`` holds the
    per-epoch records and ``save(path)`` writes a model file (with these
    labels) that ``cnnrt.load`` reads.
    """
    x = np.asarray(x)
    if x.ndim == 3:
        x = x[:, None, :, :]
    if x.ndim != 4:
        raise ValueError(f"x must be (N, C, H, W) or (N, H, W), got shape {x.shape}")
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"y must be (N,) labels for the {x.shape[0]} images, got shape {y.shape}")
    if y.size == 0:
        raise ValueError("no training samples")
    if y.dtype.kind not in "iu":
        raise ValueError(f"y must hold integer class indices, got dtype {y.dtype}")
    n_classes = len(labels) if labels is not None else int(y.max()) + 1
    layers = build_layers(arch, x.shape[1:], n_classes)
    net = Sequential(layers, input_shape=x.shape[1:], seed=seed, threads=threads)
    net.fit(x, y, epochs=epochs, batch_size=batch_size, lr=lr, optimizer=optimizer,
            validation_split=validation_split, validation_data=validation_data, **kwargs)
    net.labels = list(labels) if labels is not None else [str(i) for i in range(n_classes)]
    return net
