"""Build models/digits.h5 and the held-out digit pictures models/samples/digit_*.png.

The model is trained by cnnrt.train with the defaults of ``cnnrt-train
--dataset digits`` (scikit-learn's 1797 handwritten 8x8 digits, the
``cifar10`` architecture on a 16x16 input, 30 epochs of Adam with a cosine
schedule, 20% of every class held out).  Equivalent to::

    cnnrt-train --dataset digits --out models/digits.h5

The samples are one held-out image per digit (the first of each class in the
validation split, which training never fitted): 8x8 grayscale PNGs, dark ink
on white, exactly the pixels the data set's images give.  The model's
``/meta/preprocess`` resizes them to 16x16 (bilinear) and inverts them, as
training did.

Run ``python models/build_digits.py`` from the repository root (needs the
``train`` extra: scikit-learn).  It exits with status 1 if cnnrt-run's path
(``Model.predict_image``) misclassifies any sample.
"""
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))


def main():
    import cnnrt
    from cnnrt.train.cli import main as train
    from cnnrt.train.data import digits_images, stratified_split

    model_path = os.path.join(HERE, "digits.h5")
    code = train(["--dataset", "digits", "--out", model_path])
    if code != 0:
        return code

    images, labels = digits_images()
    _, held_out = stratified_split(labels, 0.2, seed=0)  # the defaults' split
    model = cnnrt.load(model_path)
    bad = 0
    for digit in range(10):
        index = int(held_out[labels[held_out] == digit][0])
        path = os.path.join(HERE, "samples", f"digit_{digit}.png")
        Image.fromarray(images[index], mode="L").save(path)
        probs = model.predict_image(path)
        guess = model.labels[int(np.argmax(probs))]
        ok = guess == str(digit)
        bad += not ok
        print(f"{os.path.relpath(path)}: data set image {index}, label {digit}, "
              f"predicted {guess} ({probs.max():.3f}){'' if ok else '  WRONG'}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
