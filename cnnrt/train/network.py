"""A sequential network: build, forward, backward, fit, evaluate, save.

::

    from cnnrt.train import Sequential, Conv2d, ReLU, MaxPool2d, Flatten, Dense

    net = Sequential([Conv2d(16, 3, padding=1), ReLU(), MaxPool2d(2),
                      Flatten(), Dense(10)], input_shape=(1, 16, 16), seed=0)
    history = net.fit(x, y, epochs=10, validation_split=0.2)
    net.save("model.h5", labels=[str(i) for i in range(10)])

Inputs are NumPy arrays ``(N, C, H, W)`` of any real dtype, labels integer
class indices ``(N,)``.  The last layer gives one score (logit) per class;
training minimises the softmax cross-entropy, ``predict`` returns softmax
probabilities, as the saved model file does.
"""
import math
import time
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from .. import _train as K
from ..model import get_num_threads
from . import checkpoint as ckpt
from .export import save_model, to_graph
from .layers import Conv2d, Dense, Dropout, Layer, SoftmaxCrossEntropy, layer_from_config
from .optim import LRSchedule, make_optimizer

__all__ = ["Sequential", "History", "Augment"]


class History:
    """Per-epoch records of a fit: ``epochs`` is a list of dicts with keys
    epoch, loss, acc, val_loss, val_acc, lr, seconds (val_* None without
    validation data).  ``best_epoch`` is the epoch whose weights were kept."""

    KEYS = ("epoch", "loss", "acc", "val_loss", "val_acc", "lr", "seconds")

    def __init__(self, epochs=None, best_epoch=None, best_val_acc=None):
        self.epochs: List[Dict] = list(epochs or [])
        self.best_epoch = best_epoch
        self.best_val_acc = best_val_acc

    def __getitem__(self, key):
        return [e[key] for e in self.epochs]

    def __len__(self):
        return len(self.epochs)

    def to_dict(self):
        return {"epochs": self.epochs, "best_epoch": self.best_epoch,
                "best_val_acc": self.best_val_acc}

    @classmethod
    def from_dict(cls, d):
        return cls(d.get("epochs"), d.get("best_epoch"), d.get("best_val_acc"))


class Augment:
    """Light augmentation of a training batch: a random shift of up to
    ``shift`` pixels along each axis (edge pixels repeat into the border) and,
    with ``flip``, a horizontal mirror with probability 1/2."""

    def __init__(self, shift=0, flip=False):
        if isinstance(shift, bool) or not isinstance(shift, (int, np.integer)) or shift < 0:
            raise ValueError(f"augment shift must be an integer >= 0, got {shift!r}")
        self.shift = int(shift)
        self.flip = bool(flip)

    @property
    def active(self):
        return self.shift > 0 or self.flip

    def config(self):
        return {"shift": self.shift, "flip": self.flip}

    def apply(self, x, rng, threads=0):
        n = x.shape[0]
        s = self.shift
        shifts = (rng.integers(-s, s + 1, size=(n, 2)) if s else np.zeros((n, 2))).astype(np.int32)
        flips = (rng.integers(0, 2, size=n) if self.flip else np.zeros(n)).astype(np.uint8)
        y = np.empty_like(x)
        K.shift_flip(x, shifts, flips, y, threads)
        return y


def _as_augment(value):
    if value is None or value is False:
        return Augment()
    if isinstance(value, Augment):
        return value
    if value is True:
        return Augment(shift=2)
    if isinstance(value, dict):
        return Augment(**value)
    raise ValueError(f"augment must be None, True, a dict or an Augment, got {value!r}")


def _check_xy(x, y, input_shape, n_classes, what="x"):
    x = np.asarray(x)
    if x.dtype.kind not in "iuf":
        raise ValueError(f"{what} must be a real-valued array, got dtype {x.dtype}")
    if x.ndim != len(input_shape) + 1 or tuple(x.shape[1:]) != tuple(input_shape):
        raise ValueError(f"{what} must have shape (N, {', '.join(map(str, input_shape))}), got {x.shape}")
    if y is None:
        return x, None
    y = np.asarray(y)
    if y.ndim != 1 or y.shape[0] != x.shape[0]:
        raise ValueError(f"labels must be a 1-D array of {x.shape[0]} class indices, got shape {y.shape}")
    if y.dtype.kind not in "iu":
        if y.dtype.kind == "f" and np.all(y == np.round(y)):
            y = y.astype(np.int64)
        else:
            raise ValueError(f"labels must be integer class indices, got dtype {y.dtype}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"labels must be in 0..{n_classes - 1} (the network has {n_classes} outputs), "
                         f"got {int(y.min())}..{int(y.max())}")
    return x, y.astype(np.int64)


class Sequential:
    """Layers applied in order; the last gives the class scores."""

    def __init__(self, layers: Sequence[Layer], input_shape=None, seed: int = 0,
                 dtype=np.float32, threads: Optional[int] = None):
        self.layers: List[Layer] = list(layers)
        if not self.layers:
            raise ValueError("a network needs at least one layer")
        for layer in self.layers:
            if not isinstance(layer, Layer):
                raise ValueError(f"layers must be cnnrt.train layers, got {type(layer).__name__}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.seed = int(seed)
        self.dtype = np.dtype(dtype).type
        if self.dtype not in (np.float32, np.float64):
            raise ValueError(f"dtype must be float32 or float64, got {np.dtype(dtype)}")
        self.threads = threads
        self.input_shape = None
        self.output_shape = None
        self.history = History()
        # What ``save`` writes by default: class names, /meta/preprocess, provenance.
        self.labels: Optional[List[str]] = None
        self.preprocess: Optional[Dict] = None
        self.meta: Dict[str, object] = {}
        self._name_layers()
        if input_shape is not None:
            self.build(input_shape)

    # ------------------------------------------------------------------ setup
    def _name_layers(self):
        counts: Dict[str, int] = {}
        used = {l.name for l in self.layers if l.name}
        for layer in self.layers:
            if layer.name:
                continue
            while True:
                counts[layer.kind] = counts.get(layer.kind, 0) + 1
                name = f"{layer.kind}{counts[layer.kind]}"
                if name not in used:
                    break
            layer.name = name
            used.add(name)
        names = [l.name for l in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"layer names must be unique, got {names}")

    @property
    def threads(self):
        return self._threads

    @threads.setter
    def threads(self, value):
        if value is None:
            value = get_num_threads()
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"threads must be a positive integer or None, got {value!r}")
        self._threads = int(value)
        for layer in self.layers:
            layer.threads = self._threads

    def build(self, input_shape):
        """Create the parameters for per-sample inputs of ``input_shape`` (C, H, W)."""
        try:
            shape = tuple(int(v) for v in input_shape)
        except (TypeError, ValueError):
            raise ValueError(f"input_shape must be a tuple of positive integers, got {input_shape!r}") from None
        if not shape or min(shape) < 1:
            raise ValueError(f"input_shape must be a tuple of positive integers, got {input_shape!r}")
        rng = np.random.default_rng([self.seed, 0])
        self.input_shape = shape
        for layer in self.layers:
            shape = layer.build(shape, self.dtype, rng)
            layer.threads = self._threads
        if len(shape) != 1:
            raise ValueError(f"the last layer must give a vector of class scores, got shape {shape} "
                             "(end the network with Flatten/Dense)")
        self.output_shape = shape
        return self

    @property
    def n_classes(self):
        return self.output_shape[0]

    def _need_built(self):
        if self.input_shape is None:
            raise ValueError("the network is not built: give input_shape or call build() first")

    def config(self):
        """The architecture as plain JSON data (see :meth:`from_config`)."""
        return {"input_shape": list(self.input_shape) if self.input_shape else None,
                "seed": self.seed,
                "layers": [{"type": type(l).__name__, "name": l.name, "config": l.config()}
                           for l in self.layers]}

    @classmethod
    def from_config(cls, cfg, dtype=np.float32, threads=None):
        layers = [layer_from_config(e) for e in cfg["layers"]]
        return cls(layers, input_shape=cfg.get("input_shape"), seed=cfg.get("seed", 0),
                   dtype=dtype, threads=threads)

    def parameters(self):
        """``(key, param, grad, decay)`` for every trainable array."""
        out = []
        for layer in self.layers:
            for k, p in layer.params.items():
                decay = k == "weight" and isinstance(layer, (Conv2d, Dense))
                out.append((f"{layer.name}/{k}", p, layer.grads[k], decay))
        return out

    def n_params(self):
        return sum(l.n_params() for l in self.layers)

    def summary(self) -> str:
        self._need_built()
        rows = [("layer", "type", "output", "params")]
        shape = self.input_shape
        rows.append(("input", "", "x".join(map(str, shape)), ""))
        for l in self.layers:
            rows.append((l.name, type(l).__name__, "x".join(map(str, l.out_shape)), str(l.n_params())))
        rows.append(("total", "", "", str(self.n_params())))
        widths = [max(len(r[i]) for r in rows) for i in range(4)]
        return "\n".join("  ".join(c.ljust(w) for c, w in zip(r, widths)).rstrip() for r in rows)

    # ------------------------------------------------------------- computing
    def _prepare(self, x):
        return np.ascontiguousarray(x, dtype=self.dtype)

    def forward(self, x, training=False):
        """Class scores (logits) of a batch ``(N, *input_shape)`` (a new array)."""
        return self._run(x, training).copy()

    def _run(self, x, training):
        # The result is the last layer's work buffer, reused by the next call.
        self._need_built()
        h = self._prepare(x)
        for layer in self.layers:
            h = layer.forward(h, training)
        return h

    def backward(self, dlogits):
        """Back-propagate d(loss)/d(logits); fills every layer's ``grads``."""
        g = np.ascontiguousarray(dlogits, dtype=self.dtype)
        for i in range(len(self.layers) - 1, -1, -1):
            g = self.layers[i].backward(g, need_dx=i > 0)
        return g

    def loss(self, x, y, training=False):
        """Mean softmax cross-entropy of a batch (no gradient)."""
        logits = self._run(x, training)
        return SoftmaxCrossEntropy(self._threads).forward(logits, y)

    def gradients(self, x, y, training=True):
        """Loss and the gradient of every parameter for one batch (no update)."""
        crit = SoftmaxCrossEntropy(self._threads)
        loss = crit.forward(self._run(x, training), y)
        self.backward(crit.backward())
        return loss

    def train_step(self, x, y, optimizer, lr=None, dropout_seed=0):
        """One optimisation step; returns (mean loss, number of correct predictions)."""
        for i, layer in enumerate(self.layers):
            if isinstance(layer, Dropout):
                layer.seed = (int(dropout_seed) + 7919 * i) % (1 << 64)
        crit = SoftmaxCrossEntropy(self._threads)
        logits = self._run(x, True)
        loss = crit.forward(logits, y)
        correct = int(np.count_nonzero(crit.probs.argmax(axis=1) == y))
        self.backward(crit.backward())
        optimizer.step(self.parameters(), lr)
        return loss, correct

    def predict_logits(self, x, batch_size=256):
        self._need_built()
        x = np.asarray(x)
        if tuple(x.shape[1:]) != tuple(self.input_shape):
            raise ValueError(f"x must have shape (N, {', '.join(map(str, self.input_shape))}), got {x.shape}")
        out = np.empty((x.shape[0], self.n_classes), dtype=self.dtype)
        for i in range(0, x.shape[0], batch_size):
            out[i:i + batch_size] = self._run(x[i:i + batch_size], False)
        return out

    def predict(self, x, batch_size=256):
        """Softmax class probabilities ``(N, n_classes)`` (inference mode)."""
        logits = self.predict_logits(x, batch_size).astype(np.float64)
        logits -= logits.max(axis=1, keepdims=True)
        e = np.exp(logits)
        return (e / e.sum(axis=1, keepdims=True)).astype(self.dtype)

    def evaluate(self, x, y, batch_size=256):
        """(mean loss, accuracy) in inference mode."""
        self._need_built()
        x, y = _check_xy(x, y, self.input_shape, self.n_classes)
        if x.shape[0] == 0:
            return float("nan"), float("nan")
        total = 0.0
        correct = 0
        crit = SoftmaxCrossEntropy(self._threads)
        for i in range(0, x.shape[0], batch_size):
            xb, yb = x[i:i + batch_size], y[i:i + batch_size]
            total += crit.forward(self._run(xb, False), yb) * xb.shape[0]
            correct += int(np.count_nonzero(crit.probs.argmax(axis=1) == yb))
        return total / x.shape[0], correct / x.shape[0]

    # ----------------------------------------------------------------- state
    def state_arrays(self) -> Dict[str, np.ndarray]:
        """Every parameter and buffer, keyed ``<layer>/<name>`` (copies)."""
        out = {}
        for layer in self.layers:
            for k, v in list(layer.params.items()) + list(layer.buffers.items()):
                out[f"{layer.name}/{k}"] = v.copy()
        return out

    def load_state_arrays(self, arrays):
        """Set parameters and buffers from :meth:`state_arrays` output."""
        for layer in self.layers:
            for store in (layer.params, layer.buffers):
                for k, v in store.items():
                    key = f"{layer.name}/{k}"
                    if key not in arrays:
                        raise ValueError(f"missing array '{key}'")
                    a = np.asarray(arrays[key])
                    if a.shape != v.shape:
                        raise ValueError(f"array '{key}' has shape {a.shape}, expected {v.shape}")
                    v[...] = a

    # ------------------------------------------------------------------- fit
    def fit(self, x, y, epochs=10, batch_size=64, optimizer="adam", lr=None, momentum=0.9,
            weight_decay=0.0, schedule="cosine", warmup=0.0, validation_data=None,
            validation_split=0.0, augment=None, shuffle=True, keep_best=True,
            checkpoint=None, resume=None, progress=False, log: Optional[Callable] = None,
            on_epoch: Optional[Callable] = None, checkpoint_extra=None) -> History:
        """Train on ``x`` (N, *input_shape), ``y`` (N,) integer labels.

        ``optimizer`` 'adam' (lr 1e-3) or 'sgd' (momentum, lr 0.05) or an
        optimizer object; ``schedule`` 'cosine', 'step' or 'constant' (per
        step, over ``epochs``); ``validation_data`` (xv, yv) or
        ``validation_split`` (a fraction held out, stratified by class);
        ``augment`` an :class:`Augment` or dict(shift=, flip=);
        ``keep_best`` restores the weights of the epoch with the best
        validation accuracy at the end; ``checkpoint`` a path written
        (atomically) after every epoch, ``resume`` a checkpoint to continue
        from; ``progress`` shows a tqdm bar per epoch; ``log`` receives one
        summary line per epoch.  Returns the :class:`History`.

        Every random choice (initial weights, validation split, shuffling,
        augmentation, dropout) derives from ``seed``, so two runs with the
        same arguments give the same weights.
        """
        from .data import stratified_split

        if self.input_shape is None:
            x_arr = np.asarray(x)
            if x_arr.ndim < 2:
                raise ValueError(f"x must be a batch (N, C, H, W), got shape {x_arr.shape}")
            self.build(x_arr.shape[1:])
        x, y = _check_xy(x, y, self.input_shape, self.n_classes)
        if validation_data is not None:
            if validation_split:
                raise ValueError("give validation_data or validation_split, not both")
            xv, yv = _check_xy(validation_data[0], validation_data[1], self.input_shape,
                               self.n_classes, "validation x")
        elif validation_split:
            tr, va = stratified_split(y, validation_split, self.seed)
            x, y, xv, yv = x[tr], y[tr], x[va], y[va]
        else:
            xv = yv = None
        if isinstance(epochs, bool) or not isinstance(epochs, (int, np.integer)) or epochs < 1:
            raise ValueError(f"epochs must be a positive integer, got {epochs!r}")
        if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size!r}")
        if x.shape[0] == 0:
            raise ValueError("no training samples")
        aug = _as_augment(augment)
        opt = make_optimizer(optimizer, lr, momentum, weight_decay, self._threads)
        opt.threads = self._threads
        sched = LRSchedule(schedule, opt.lr, epochs, warmup=warmup)
        x = np.ascontiguousarray(x, dtype=self.dtype)
        if xv is not None:
            xv = np.ascontiguousarray(xv, dtype=self.dtype)

        fingerprint = ckpt.data_fingerprint(x, y)
        settings = {"epochs": int(epochs), "batch_size": int(batch_size),
                    "optimizer": opt.config(), "schedule": schedule, "warmup": float(warmup),
                    "augment": aug.config(), "shuffle": bool(shuffle)}
        history = History()
        best_state = None
        start = 0
        if resume is not None:
            state = ckpt.load_checkpoint(resume)
            ckpt.check_compatible(state, self, fingerprint)
            self.load_state_arrays(state["params"])
            opt.load_state_arrays(state["optimizer"])
            history = History.from_dict(state["info"]["history"])
            best_state = state["best"] or None
            start = int(state["info"]["epoch"])
            if start >= epochs:
                if log:
                    log(f"checkpoint {resume} already has {start} epochs (asked for {epochs})")
        n = x.shape[0]
        steps = -(-n // batch_size)
        bar_factory = _progress_factory() if progress else None
        for epoch in range(start, epochs):
            t0 = time.perf_counter()
            rng = np.random.default_rng([self.seed, 1, epoch])
            order = rng.permutation(n) if shuffle else np.arange(n)
            total_loss = 0.0
            correct = 0
            seen = 0
            bar = bar_factory(steps, epoch, epochs) if bar_factory else None
            for s in range(steps):
                idx = order[s * batch_size:(s + 1) * batch_size]
                xb = x[idx]
                yb = y[idx]
                if aug.active:
                    xb = aug.apply(xb, rng, self._threads)
                lr_now = sched(epoch + s / steps)
                loss, ok = self.train_step(xb, yb, opt, lr_now,
                                           dropout_seed=int(rng.integers(0, 2**62)))
                if not math.isfinite(loss):
                    if bar is not None:
                        bar.close()
                    raise FloatingPointError(
                        f"the loss became {loss} at epoch {epoch + 1}, step {s + 1}; "
                        f"try a lower learning rate (now {lr_now:g})")
                total_loss += loss * len(idx)
                correct += ok
                seen += len(idx)
                if bar is not None:
                    bar.update(1)
                    bar.set_postfix(loss=f"{total_loss / seen:.4f}", acc=f"{correct / seen:.3f}",
                                    refresh=False)
            if bar is not None:
                bar.close()
            rec = {"epoch": epoch + 1, "loss": total_loss / seen, "acc": correct / seen,
                   "val_loss": None, "val_acc": None, "lr": sched(epoch + 1 - 1e-9)}
            if xv is not None and xv.shape[0]:
                rec["val_loss"], rec["val_acc"] = self.evaluate(xv, yv)
            rec["seconds"] = time.perf_counter() - t0
            history.epochs.append(rec)
            improved = False
            if rec["val_acc"] is not None and keep_best:
                if history.best_val_acc is None or rec["val_acc"] > history.best_val_acc:
                    history.best_val_acc = rec["val_acc"]
                    history.best_epoch = epoch + 1
                    best_state = self.state_arrays()
                    improved = True
            elif not keep_best or xv is None:
                history.best_epoch = epoch + 1
                history.best_val_acc = rec["val_acc"]
            if log:
                log(format_epoch(rec, epochs, improved))
            if checkpoint is not None:
                ckpt.save_checkpoint(checkpoint, self, opt, history, best_state, epoch + 1,
                                     settings, fingerprint, extra=checkpoint_extra)
            if on_epoch is not None:
                on_epoch(rec)
        if keep_best and best_state is not None:
            self.load_state_arrays(best_state)
        self.history = history
        return history

    # ---------------------------------------------------------------- export
    def to_graph(self, **kwargs):
        """The network as a :class:`cnnrt.format.Graph` (see ``cnnrt.train.export``)."""
        return to_graph(self, **kwargs)

    def save(self, path, labels=None, preprocess=None, meta=None, description=None,
             fold_batchnorm=True):
        """Write a cnnrt model file (format version 1) that ``cnnrt.load`` reads.

        ``labels`` one name per class, ``preprocess`` the ``/meta/preprocess``
        dict, ``meta`` free-form provenance attributes; each defaults to the
        network's attribute of the same name."""
        return save_model(self, path,
                          labels=self.labels if labels is None else labels,
                          preprocess=self.preprocess if preprocess is None else preprocess,
                          meta=self.meta if meta is None else meta,
                          description=description, fold_batchnorm=fold_batchnorm)


def format_epoch(rec, epochs, improved=False):
    """One summary line for an epoch record."""
    width = len(str(epochs))
    parts = [f"epoch {rec['epoch']:>{width}}/{epochs}", f"loss {rec['loss']:.4f}",
             f"acc {100 * rec['acc']:6.2f}%"]
    if rec.get("val_acc") is not None:
        parts += [f"val_loss {rec['val_loss']:.4f}", f"val_acc {100 * rec['val_acc']:6.2f}%"]
    parts += [f"lr {rec['lr']:.2e}", f"{rec['seconds']:.1f}s"]
    line = "  ".join(parts)
    return line + ("  *best" if improved else "")


def _progress_factory():
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None

    def make(steps, epoch, epochs):
        # disable=None: no bar when stderr is not a terminal (logs, CI).
        return tqdm(total=steps, desc=f"epoch {epoch + 1}/{epochs}", unit="batch",
                    leave=False, dynamic_ncols=True, disable=None)
    return make
