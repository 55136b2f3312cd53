"""Digits: held-out accuracy and wall time of cnnrt-train's defaults.

Two measurements on scikit-learn's 1797 handwritten digits:

1. ``cnnrt-train --dataset digits --out MODEL`` exactly as a user runs it
   (every default): wall time from start to model file, and the accuracy on
   its validation split (20% of every class, never trained on; it picks the
   epoch that is kept).
2. A stricter number: 20% of every class is set aside as a test set and
   written as PNG files; the rest becomes an image folder trained with
   ``cnnrt-train --data FOLDER --size 16 --invert`` (the same settings as
   ``--dataset digits``).  The test PNGs are then classified through the
   runtime (``cnnrt.load`` + ``Model.predict_image``, as ``cnnrt-run``
   does), so the accuracy covers the whole path from image file to label and
   the test images played no part in training or epoch selection.

    python benchmarks/train_digits.py [--threads N] [--seeds 0 1 2]
"""
import argparse
import os
import tempfile
import time

import numpy as np


def main(argv=None):
    import cnnrt
    from cnnrt.format import read_model
    from cnnrt.train.cli import main as train
    from cnnrt.train.data import digits_images, save_digits_folder, stratified_split

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None)
    p.add_argument("--seeds", type=int, nargs="+", default=[0])
    args = p.parse_args(argv)
    extra = ["--quiet"] + (["--threads", str(args.threads)] if args.threads else [])

    with tempfile.TemporaryDirectory() as tmp:
        for seed in args.seeds:
            model = os.path.join(tmp, f"digits_{seed}.h5")
            t0 = time.perf_counter()
            code = train(["--dataset", "digits", "--out", model, "--seed", str(seed)] + extra)
            seconds = time.perf_counter() - t0
            if code:
                raise SystemExit(code)
            meta = read_model(model).meta
            print(f"seed {seed}: cnnrt-train --dataset digits: {seconds:.1f}s wall, "
                  f"val_acc {100 * meta['val_accuracy']:.2f}% on {meta['val_samples']} held-out "
                  f"images (epoch {meta['best_epoch']} of {meta['epochs']})")

            images, labels = digits_images()
            rest, test = stratified_split(labels, 0.2, seed=1000 + seed)
            folder = os.path.join(tmp, f"train_{seed}")
            save_digits_folder(folder, rest)
            test_paths = save_digits_folder(os.path.join(tmp, f"test_{seed}"), test)
            model = os.path.join(tmp, f"folder_{seed}.h5")
            t0 = time.perf_counter()
            code = train(["--data", folder, "--size", "16", "--invert", "--out", model,
                          "--seed", str(seed)] + extra)
            seconds = time.perf_counter() - t0
            if code:
                raise SystemExit(code)
            m = cnnrt.load(model)
            correct = sum(int(m.labels[int(np.argmax(m.predict_image(path)))] == str(labels[i]))
                          for path, i in zip(test_paths, test))
            print(f"seed {seed}: trained on {len(rest)} digit PNGs in {seconds:.1f}s; "
                  f"test accuracy {100 * correct / len(test):.2f}% "
                  f"({correct}/{len(test)} PNGs never seen in training or epoch selection)")


if __name__ == "__main__":
    main()
