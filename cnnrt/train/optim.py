"""Optimizers and learning-rate schedules of ``cnnrt.train``.

An optimizer updates a list of ``(key, param, grad)`` triples in place with
the compiled update kernels.  Weight decay is an L2 term added to the
gradient (decoupled for ``Adam(decoupled=True)``, i.e. AdamW) and applies to
weights only (``decay`` set per parameter by the network: conv and dense
weights yes, biases and batch-norm scales no).  Its state (momentum buffers,
moment estimates, step count) is plain arrays, saved in checkpoints.
"""
import math
from typing import Dict

import numpy as np

from .. import _train as K

__all__ = ["SGD", "Adam", "make_optimizer", "LRSchedule", "OPTIMIZERS", "SCHEDULES"]

OPTIMIZERS = ("adam", "sgd")
SCHEDULES = ("cosine", "step", "constant")


def _check_number(value, what, low=None, high=None, low_open=False):
    try:
        v = float(value)
    except (TypeError, ValueError):
        raise ValueError(f"{what} must be a number, got {value!r}") from None
    if not math.isfinite(v):
        raise ValueError(f"{what} must be finite, got {value!r}")
    if low is not None and (v < low or (low_open and v == low)):
        raise ValueError(f"{what} must be {'>' if low_open else '>='} {low}, got {value!r}")
    if high is not None and v >= high:
        raise ValueError(f"{what} must be < {high}, got {value!r}")
    return v


class _Optimizer:
    name = ""

    def __init__(self, lr, weight_decay=0.0, threads=0):
        self.lr = _check_number(lr, "learning rate", 0.0, low_open=True)
        self.weight_decay = _check_number(weight_decay, "weight_decay", 0.0)
        self.threads = threads
        self.step_count = 0
        self.state: Dict[str, np.ndarray] = {}

    def _slot(self, key, param):
        arr = self.state.get(key)
        if arr is None or arr.shape != param.shape or arr.dtype != param.dtype:
            arr = np.zeros_like(param)
            self.state[key] = arr
        return arr

    def step(self, triples, lr=None):
        """One update of every ``(key, param, grad, decay)``; lr overrides self.lr."""
        self.step_count += 1
        lr = self.lr if lr is None else lr
        for key, p, g, decay in triples:
            self._update(key, p.reshape(-1), g.reshape(-1), lr,
                         self.weight_decay if decay else 0.0)

    def state_arrays(self):
        out = {k: v for k, v in self.state.items()}
        out["__step__"] = np.array(self.step_count, dtype=np.int64)
        return out

    def load_state_arrays(self, arrays):
        self.state = {k: np.array(v) for k, v in arrays.items() if k != "__step__"}
        self.step_count = int(arrays.get("__step__", 0))


class SGD(_Optimizer):
    """SGD with momentum (PyTorch convention: v = m*v + g; p -= lr*v), optional Nesterov."""

    name = "sgd"

    def __init__(self, lr=0.01, momentum=0.9, weight_decay=0.0, nesterov=False, threads=0):
        super().__init__(lr, weight_decay, threads)
        self.momentum = _check_number(momentum, "momentum", 0.0, 1.0)
        self.nesterov = bool(nesterov)

    def _update(self, key, p, g, lr, wd):
        v = self._slot(key + "/velocity", p)
        K.sgd_update(p, g, v.reshape(-1), lr, self.momentum, wd, self.nesterov, self.threads)

    def config(self):
        return {"name": self.name, "lr": self.lr, "momentum": self.momentum,
                "weight_decay": self.weight_decay, "nesterov": self.nesterov}


class Adam(_Optimizer):
    """Adam with bias correction; ``decoupled=True`` gives AdamW weight decay."""

    name = "adam"

    def __init__(self, lr=0.001, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0,
                 decoupled=False, threads=0):
        super().__init__(lr, weight_decay, threads)
        self.beta1 = _check_number(beta1, "beta1", 0.0, 1.0)
        self.beta2 = _check_number(beta2, "beta2", 0.0, 1.0)
        self.eps = _check_number(eps, "eps", 0.0, low_open=True)
        self.decoupled = bool(decoupled)

    def _update(self, key, p, g, lr, wd):
        m = self._slot(key + "/m", p)
        v = self._slot(key + "/v", p)
        K.adam_update(p, g, m.reshape(-1), v.reshape(-1), lr, self.beta1, self.beta2, self.eps,
                      wd, self.step_count, self.decoupled, self.threads)

    def config(self):
        return {"name": self.name, "lr": self.lr, "beta1": self.beta1, "beta2": self.beta2,
                "eps": self.eps, "weight_decay": self.weight_decay, "decoupled": self.decoupled}


def make_optimizer(name, lr=None, momentum=0.9, weight_decay=0.0, threads=0):
    """``adam`` (default lr 1e-3) or ``sgd`` with momentum (default lr 0.05)."""
    if isinstance(name, _Optimizer):
        return name
    if name == "adam":
        return Adam(lr=1e-3 if lr is None else lr, weight_decay=weight_decay, threads=threads)
    if name == "sgd":
        return SGD(lr=0.05 if lr is None else lr, momentum=momentum, weight_decay=weight_decay,
                   threads=threads)
    raise ValueError(f"optimizer must be one of {', '.join(OPTIMIZERS)}, got {name!r}")


class LRSchedule:
    """Learning rate as a function of the (fractional) epoch.

    ``cosine``: from ``base`` down to ``base * final`` over ``epochs`` along a
    half cosine, after ``warmup`` epochs rising linearly from base/10;
    ``step``: ``base * gamma ** (epoch // step_size)``; ``constant``: base.
    """

    def __init__(self, kind, base, epochs, warmup=0.0, final=0.01, step_size=None, gamma=0.1):
        if kind not in SCHEDULES:
            raise ValueError(f"schedule must be one of {', '.join(SCHEDULES)}, got {kind!r}")
        self.kind = kind
        self.base = float(base)
        self.epochs = max(1, int(epochs))
        self.warmup = float(warmup)
        self.final = float(final)
        self.step_size = max(1, int(step_size if step_size else max(1, self.epochs // 3)))
        self.gamma = float(gamma)

    def __call__(self, epoch: float) -> float:
        if self.kind == "constant":
            return self.base
        if self.kind == "step":
            return self.base * self.gamma ** (int(epoch) // self.step_size)
        if epoch < self.warmup:
            return self.base * (0.1 + 0.9 * epoch / self.warmup)
        span = max(self.epochs - self.warmup, 1e-9)
        t = min(max((epoch - self.warmup) / span, 0.0), 1.0)
        low = self.base * self.final
        return low + 0.5 * (self.base - low) * (1.0 + math.cos(math.pi * t))
