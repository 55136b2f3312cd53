"""Built-in architectures.

Each builder takes the per-sample input shape (C, H, W) and the number of
classes and returns the list of layers; pooling stages are skipped once the
feature map is too small to halve, so every architecture accepts small
inputs (down to 4x4).

========================  =================================================
``simple``                INPUT - CONV(32, 3x3) - RELU - POOL - FC: the
                          smallest useful pattern
``lenet``                 LeNet-5 style: CONV(6, 5x5) - RELU - POOL -
                          CONV(16, 5x5) - RELU - POOL - FC(120) - RELU -
                          FC(84) - RELU - FC
``cifar10``               the classic small CIFAR-10 net:
                          [CONV(16, 5x5) - RELU - POOL] - [CONV(20, 5x5) -
                          RELU - POOL] - [CONV(20, 5x5) - RELU - POOL] - FC
``cifar10-deep``          a deeper variant, INPUT - [[CONV - BN - RELU] x 2
                          - POOL] x 2 - FC(128) - RELU - DROPOUT - FC, with
                          3x3 filters (32 then 64 channels)
========================  =================================================
"""
from typing import Callable, Dict, List

from .layers import BatchNorm2d, Conv2d, Dense, Dropout, Flatten, Layer, MaxPool2d, ReLU

__all__ = ["ARCHITECTURES", "build_layers", "DEFAULT_ARCH"]


def _can_pool(h, w):
    return h >= 2 and w >= 2


def _simple(in_shape, n_classes) -> List[Layer]:
    _, h, w = in_shape
    layers = [Conv2d(32, 3, padding="same"), ReLU()]
    if _can_pool(h, w):
        layers.append(MaxPool2d(2))
    return layers + [Flatten(), Dense(n_classes, init="glorot")]


def _lenet(in_shape, n_classes) -> List[Layer]:
    _, h, w = in_shape
    layers = [Conv2d(6, 5, padding=2), ReLU()]
    if _can_pool(h, w):
        layers.append(MaxPool2d(2))
        h, w = h // 2, w // 2
    # The second convolution is 'valid' as in LeNet-5 when the map allows it.
    pad = 0 if min(h, w) >= 8 else 2
    layers += [Conv2d(16, 5, padding=pad), ReLU()]
    h, w = h + 2 * pad - 4, w + 2 * pad - 4
    if _can_pool(h, w):
        layers.append(MaxPool2d(2))
    return layers + [Flatten(), Dense(120), ReLU(), Dense(84), ReLU(),
                     Dense(n_classes, init="glorot")]


def _cifar10(in_shape, n_classes) -> List[Layer]:
    _, h, w = in_shape
    layers: List[Layer] = []
    for filters in (16, 20, 20):
        layers += [Conv2d(filters, 5, padding=2), ReLU()]
        if _can_pool(h, w):
            layers.append(MaxPool2d(2))
            h, w = h // 2, w // 2
    return layers + [Flatten(), Dense(n_classes, init="glorot")]


def _cifar10_deep(in_shape, n_classes) -> List[Layer]:
    _, h, w = in_shape
    layers: List[Layer] = []
    for filters in (32, 64):
        for _ in range(2):
            layers += [Conv2d(filters, 3, padding=1, bias=False), BatchNorm2d(), ReLU()]
        if _can_pool(h, w):
            layers.append(MaxPool2d(2))
            h, w = h // 2, w // 2
    return layers + [Flatten(), Dense(128), ReLU(), Dropout(0.5),
                     Dense(n_classes, init="glorot")]


ARCHITECTURES: Dict[str, Callable] = {
    "simple": _simple,
    "lenet": _lenet,
    "cifar10": _cifar10,
    "cifar10-deep": _cifar10_deep,
}

DEFAULT_ARCH = "cifar10"


def build_layers(name, in_shape, n_classes) -> List[Layer]:
    """Layers of the built-in architecture ``name`` for this input and class count."""
    if name not in ARCHITECTURES:
        raise ValueError(f"unknown architecture {name!r}; choose one of {', '.join(ARCHITECTURES)}")
    if len(in_shape) != 3:
        raise ValueError(f"architectures take image inputs (C, H, W), got {tuple(in_shape)}")
    if min(in_shape[1:]) < 4:
        raise ValueError(f"inputs must be at least 4x4 pixels, got {in_shape[1]}x{in_shape[2]}")
    if n_classes < 2:
        raise ValueError(f"a classifier needs at least 2 classes, got {n_classes}")
    return ARCHITECTURES[name](tuple(in_shape), int(n_classes))
