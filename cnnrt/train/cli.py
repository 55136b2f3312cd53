"""The ``cnnrt-train`` command: train a CNN and write a cnnrt model file.

::

    cnnrt-train --data DIR --out MODEL.h5 [--arch NAME] [--epochs N] [--batch B]
                [--lr LR] [--seed S] [--plot curves.png] [...]
    cnnrt-train --dataset digits --out MODEL.h5

``--data DIR`` reads an image folder, ``DIR/<class name>/*.png|jpg``; the
class names become the model's labels.  ``--dataset digits`` uses
scikit-learn's bundled handwritten digits (no download).  A stratified
fraction of every class (``--val-split``) is held out; the weights of the
epoch with the best held-out accuracy are kept.  The model file records the
labels, the exact preprocessing (``/meta/preprocess``) and provenance
(dataset, epochs, validation accuracy, date, settings).

Each epoch shows a progress bar (tqdm, on stderr) and prints one summary
line.  A checkpoint is written after every epoch (``--checkpoint``, default
``MODEL.ckpt.npz``, removed after a successful run unless given
explicitly), and ``--resume`` continues an interrupted run from it.

Errors are one line on stderr, ``cnnrt-train: error: <message>``.  Exit
status: 0 success, 1 failure (data, model, checkpoint), 2 bad command line,
130 interrupted.
"""
import argparse
import datetime
import math
import os
import sys
import time


EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

PROG = "cnnrt-train"
DEFAULT_EPOCHS = 30
DIGITS_SIZE = 16
FOLDER_SIZE = 32


class _UsageError(Exception):
    pass


class _Parser(argparse.ArgumentParser):
    def error(self, message):
        raise _UsageError(" ".join(message.split()))


def _positive_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}")
    return value


def _nonneg_int(text):
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"expected an integer >= 0, got {text!r}")
    return value


def _positive_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}") from None
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected a positive number, got {text!r}")
    return value


def _nonneg_float(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"expected a number >= 0, got {text!r}")
    return value


def _fraction(text):
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}") from None
    if not 0.0 <= value < 1.0:
        raise argparse.ArgumentTypeError(f"expected a fraction in [0, 1), got {text!r}")
    return value


def build_parser():
    from .archs import ARCHITECTURES, DEFAULT_ARCH

    p = _Parser(
        prog=PROG,
        description="Train a CNN on an image folder (or the bundled digits) and write a cnnrt model file.",
        epilog="Exit status: 0 success, 1 failure, 2 bad arguments, 130 interrupted.",
    )
    src = p.add_argument_group("data")
    src.add_argument("--data", metavar="DIR", help="image folder: DIR/<class name>/*.png|jpg")
    src.add_argument("--dataset", choices=["digits"],
                     help="built-in data set: scikit-learn's 8x8 handwritten digits")
    src.add_argument("--size", metavar="N", type=_positive_int, nargs="+",
                     help=f"input size H [W] images are resized to (default {FOLDER_SIZE}; "
                          f"{DIGITS_SIZE} for digits)")
    src.add_argument("--color", choices=["auto", "L", "RGB"], default="auto",
                     help="L (grayscale) or RGB input; auto: L when every image is grayscale")
    src.add_argument("--invert", action="store_true",
                     help="feed 255 - pixel (dark-on-light images to a light-on-dark net)")
    src.add_argument("--no-normalize", dest="normalize", action="store_false",
                     help="only scale pixels to 0..1 (default: also subtract the mean, divide by the std)")
    src.add_argument("--val-split", metavar="F", type=_fraction, default=0.2,
                     help="fraction of every class held out for validation (default 0.2)")
    src.add_argument("--shift", metavar="PX", type=_nonneg_int, default=None,
                     help="augmentation: random shift up to PX pixels (default: 1 per 16 pixels of input)")
    src.add_argument("--flip", action="store_true",
                     help="augmentation: random horizontal flips (not for digits or text)")
    src.add_argument("--no-augment", dest="augment", action="store_false",
                     help="no augmentation")

    tr = p.add_argument_group("training")
    tr.add_argument("--out", metavar="MODEL.h5", required=True, help="model file to write")
    tr.add_argument("--arch", choices=list(ARCHITECTURES), default=DEFAULT_ARCH,
                    help=f"architecture (default {DEFAULT_ARCH})")
    tr.add_argument("--epochs", metavar="N", type=_positive_int, default=DEFAULT_EPOCHS,
                    help=f"epochs (default {DEFAULT_EPOCHS})")
    tr.add_argument("--batch", metavar="B", type=_positive_int, default=64,
                    help="batch size (default 64)")
    tr.add_argument("--lr", metavar="LR", type=_positive_float, default=None,
                    help="learning rate (default 0.001 for adam, 0.05 for sgd)")
    tr.add_argument("--optimizer", choices=["adam", "sgd"], default="adam",
                    help="adam (default) or sgd with momentum")
    tr.add_argument("--momentum", metavar="M", type=_fraction, default=0.9,
                    help="sgd momentum (default 0.9)")
    tr.add_argument("--weight-decay", metavar="WD", type=_nonneg_float, default=1e-4,
                    help="L2 weight decay on conv and dense weights (default 1e-4)")
    tr.add_argument("--schedule", choices=["cosine", "step", "constant"], default="cosine",
                    help="learning-rate schedule (default cosine)")
    tr.add_argument("--seed", metavar="S", type=_nonneg_int, default=0,
                    help="random seed: weights, split, shuffling, augmentation (default 0)")
    tr.add_argument("--threads", metavar="N", type=_positive_int, default=None,
                    help="kernel threads (default: every core)")
    tr.add_argument("--no-fold-bn", dest="fold_bn", action="store_false",
                    help="write batchnorm2d nodes instead of folding them into the convolutions")

    out = p.add_argument_group("checkpoints and output")
    out.add_argument("--checkpoint", metavar="PATH", default=None,
                     help="checkpoint written after every epoch (default MODEL.ckpt.npz, "
                          "removed after a successful run)")
    out.add_argument("--resume", metavar="PATH", nargs="?", const="", default=None,
                     help="continue from a checkpoint (default: the --checkpoint path)")
    out.add_argument("--plot", metavar="PNG", default=None,
                     help="write the loss and accuracy curves to this PNG (needs matplotlib)")
    out.add_argument("--quiet", action="store_true", help="no progress bar and no epoch lines")
    return p


def _fail(message):
    sys.stderr.write(f"{PROG}: error: {message}\n")
    sys.stderr.flush()


def _one_line(exc):
    text = " ".join(str(exc).split())
    return text or type(exc).__name__


def _default_checkpoint(out):
    base = out[:-3] if out.lower().endswith(".h5") else out
    return base + ".ckpt.npz"


def _check_plot_backend():
    try:
        import matplotlib
    except ImportError:
        raise RuntimeError("--plot needs matplotlib: pip install matplotlib "
                           "(or pip install 'cnnrt[train]')") from None
    matplotlib.use("Agg")


def plot_history(history, path, title=None):
    """Write the loss and accuracy curves of a :class:`History` to a PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    epochs = history["epoch"]
    fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(10, 4))
    ax1.plot(epochs, history["loss"], label="training")
    ax2.plot(epochs, [100 * a for a in history["acc"]], label="training")
    if any(v is not None for v in history["val_loss"]):
        ax1.plot(epochs, history["val_loss"], label="validation")
        ax2.plot(epochs, [None if a is None else 100 * a for a in history["val_acc"]],
                 label="validation")
    if history.best_epoch is not None:
        for ax in (ax1, ax2):
            ax.axvline(history.best_epoch, color="gray", linestyle=":", label="kept epoch")
    ax1.set_xlabel("epoch")
    ax1.set_ylabel("loss (cross-entropy)")
    ax2.set_xlabel("epoch")
    ax2.set_ylabel("accuracy (%)")
    for ax in (ax1, ax2):
        ax.grid(True, alpha=0.3)
        ax.legend()
    if title:
        fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    plt.close(fig)


def _load_data(args):
    from .data import load_digits, load_image_folder

    if args.size is not None and len(args.size) > 2:
        raise _UsageError("--size takes H or H W")
    if args.dataset == "digits":
        size = tuple(args.size) if args.size else DIGITS_SIZE
        if len(args.size or ()) == 1:
            size = (args.size[0], args.size[0])
        if args.color == "RGB":
            raise _UsageError("the digits are grayscale: --color RGB does not apply")
        images = load_digits(size)
        name = "digits"
    else:
        size = FOLDER_SIZE if not args.size else (
            (args.size[0], args.size[0]) if len(args.size) == 1 else tuple(args.size))
        images = load_image_folder(args.data, size=size, color=args.color, invert=args.invert)
        name = os.path.basename(os.path.normpath(args.data))
    return images, name


def run(args, out=None):
    """Train as the parsed arguments say; returns the exit status."""
    from .. import __version__
    from ..format import write_model
    from .archs import build_layers
    from .checkpoint import load_checkpoint
    from .data import apply_preprocess, make_preprocess, stratified_split
    from .export import to_graph
    from .network import Augment, Sequential

    if (args.data is None) == (args.dataset is None):
        raise _UsageError("give exactly one of --data DIR or --dataset digits")
    if args.plot:
        _check_plot_backend()
    out_dir = os.path.dirname(os.path.abspath(args.out))
    if not os.path.isdir(out_dir):
        raise FileNotFoundError(f"cannot write {args.out}: no such folder {out_dir}")
    ckpt_path = args.checkpoint or _default_checkpoint(args.out)
    resume = None
    if args.resume is not None:
        resume = args.resume or ckpt_path
        if not os.path.exists(resume):
            raise FileNotFoundError(f"no checkpoint to resume from: {resume}")

    out = out or sys.stdout
    say = (lambda line: print(line, file=out, flush=True)) if not args.quiet else None
    t0 = time.perf_counter()
    images, data_name = _load_data(args)
    train_idx, val_idx = stratified_split(images.y, args.val_split, args.seed)
    pre = make_preprocess(images, train_idx, normalize=args.normalize)
    x = apply_preprocess(images.raw, pre)
    y = images.y
    n_classes = len(images.labels)

    if resume is not None:
        state = load_checkpoint(resume)
        net = Sequential.from_config(state["info"]["network"], threads=args.threads)
        arch = state["info"].get("extra", {}).get("arch", args.arch)
    else:
        arch = args.arch
        net = Sequential(build_layers(arch, images.input_shape, n_classes),
                         input_shape=images.input_shape, seed=args.seed, threads=args.threads)
    if net.n_classes != n_classes:
        raise ValueError(f"the checkpoint's network has {net.n_classes} outputs but the data has "
                         f"{n_classes} classes")

    if args.augment:
        shift = args.shift if args.shift is not None else max(1, min(images.size) // 16)
        augment = Augment(shift=shift, flip=args.flip)
    else:
        augment = Augment()
    if say:
        say(f"data: {images.source}: {len(images)} images, {n_classes} classes "
            f"({', '.join(images.labels[:10])}{', ...' if n_classes > 10 else ''}), "
            f"input {'x'.join(map(str, images.input_shape))}, "
            f"{len(train_idx)} for training, {len(val_idx)} held out")
        say(f"model: {arch}, {net.n_params()} parameters, {net.threads} threads; "
            f"{args.optimizer} lr {args.lr if args.lr else ('0.001' if args.optimizer == 'adam' else '0.05')}, "
            f"batch {args.batch}, {args.epochs} epochs, {args.schedule} schedule, "
            f"augment shift {augment.shift}{' + flip' if augment.flip else ''}")

    extra = {"arch": arch, "dataset": data_name, "labels": images.labels, "preprocess": pre}
    history = net.fit(
        x[train_idx], y[train_idx], epochs=args.epochs, batch_size=args.batch,
        optimizer=args.optimizer, lr=args.lr, momentum=args.momentum,
        weight_decay=args.weight_decay, schedule=args.schedule,
        validation_data=(x[val_idx], y[val_idx]) if len(val_idx) else None,
        augment=augment, keep_best=True, checkpoint=ckpt_path, resume=resume,
        progress=not args.quiet, log=say, checkpoint_extra=extra)
    seconds = time.perf_counter() - t0

    best = history.best_epoch
    rec = next((e for e in history.epochs if e["epoch"] == best), history.epochs[-1]) \
        if history.epochs else None
    meta = {
        "dataset": images.source if args.dataset else os.path.abspath(args.data),
        "classes": n_classes,
        "train_samples": int(len(train_idx)),
        "val_samples": int(len(val_idx)),
        "epochs": int(len(history)),
        "best_epoch": int(best) if best is not None else int(len(history)),
        "arch": arch,
        "optimizer": args.optimizer,
        "learning_rate": float(net_lr(args)),
        "batch_size": int(args.batch),
        "weight_decay": float(args.weight_decay),
        "schedule": args.schedule,
        "augment": f"shift {augment.shift}" + (", flip" if augment.flip else ""),
        "seed": int(args.seed),
        "trained": datetime.datetime.now(datetime.timezone.utc).replace(microsecond=0).isoformat(),
        "training_seconds": round(seconds, 1),
        "trainer": f"cnnrt.train {__version__}",
    }
    if rec is not None:
        meta["train_accuracy"] = float(rec["acc"])
        meta["train_loss"] = float(rec["loss"])
        if rec["val_acc"] is not None:
            meta["val_accuracy"] = float(rec["val_acc"])
            meta["val_loss"] = float(rec["val_loss"])
    description = (f"{arch} trained by cnnrt.train on {data_name}: "
                   f"{n_classes} classes, {'x'.join(map(str, images.input_shape))} input")
    graph = to_graph(net, labels=images.labels, preprocess=pre, meta=meta,
                     description=description, fold_batchnorm=args.fold_bn)
    write_model(args.out, graph)
    if args.plot:
        plot_history(history, args.plot, title=description)
    if args.checkpoint is None and os.path.exists(ckpt_path):
        os.unlink(ckpt_path)
    if say:
        acc = meta.get("val_accuracy")
        summary = (f"wrote {args.out}: epoch {meta['best_epoch']} of {meta['epochs']}, "
                   + (f"val_acc {100 * acc:.2f}% on {len(val_idx)} held-out images, "
                      if acc is not None else "no held-out images, ")
                   + f"{seconds:.1f}s")
        say(summary)
        if args.plot:
            say(f"wrote {args.plot}")
    return EXIT_OK


def net_lr(args):
    if args.lr is not None:
        return args.lr
    return 1e-3 if args.optimizer == "adam" else 0.05


def main(argv=None):
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except _UsageError as exc:
        _fail(f"{exc} (see {PROG} --help)")
        return EXIT_USAGE
    except SystemExit as exc:  # --help
        return exc.code if isinstance(exc.code, int) else EXIT_OK
    try:
        return run(args)
    except _UsageError as exc:
        _fail(f"{exc} (see {PROG} --help)")
        return EXIT_USAGE
    except KeyboardInterrupt:
        _fail("interrupted; --resume continues from the last finished epoch")
        return EXIT_INTERRUPTED
    except FileNotFoundError as exc:
        _fail(_one_line(exc))
        return EXIT_FAILURE
    except (ValueError, RuntimeError, ImportError, OSError, MemoryError, FloatingPointError) as exc:
        _fail(_one_line(exc))
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
