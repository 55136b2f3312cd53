"""Build models/demo.h5 and the sample pictures in models/samples/.

The demonstration model is a small CNN whose weights are set by hand, not
trained.  It tells four kinds of picture apart: horizontal stripes, vertical
stripes, a checkerboard and a blank picture.

How it works (input: 1x32x32 grayscale, values 0..1):

* ``conv1`` (3x3, no padding, ReLU) holds four oriented edge filters: the
  vertical gradient ``(rows below - rows above) / 3`` and its negative, and
  the horizontal gradient and its negative.  After the ReLU each channel
  keeps one edge polarity, so channels 0+1 measure horizontal edges and
  channels 2+3 vertical edges.  There is no padding, so the picture's own
  border never looks like an edge.
* ``pool1`` (2x2 average) and ``gap`` (global average) turn each channel into
  its mean edge strength.  For stripes of contrast c (0..1) and period P
  pixels, the mean strength across them is about 4c/P (e.g. 0.5 for
  full-contrast stripes 4 pixels wide), whatever the blur.
* ``fc`` maps the horizontal strength u and vertical strength v to four
  scores, with gain G and threshold T:

      horizontal stripes  G (u - 0.6 v) - T
      vertical stripes    G (v - 0.6 u) - T
      checkerboard        G 0.6 (u + v) - T
      blank               0

  so a picture with edges mostly in one direction (ratio over 3:1) is
  stripes, edges in both directions a checkerboard, and a picture whose edge
  strength is below T/G (0.1) blank.  ``prob`` is a softmax.

Run ``python models/build_demo.py`` from the repository root.  It writes the
model and the samples, then classifies every sample twice (with a float64
NumPy implementation of the network written here, and with cnnrt when its
kernels are built) and exits with status 1 if any sample is misclassified or
the two disagree.
"""
import os
import sys

import numpy as np
from PIL import Image

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

from cnnrt import __version__  # noqa: E402
from cnnrt.format import Graph, node, write_model  # noqa: E402
from cnnrt.image import load_image  # noqa: E402

LABELS = ["horizontal stripes", "vertical stripes", "checkerboard", "blank"]
GAIN = 50.0
THRESHOLD = 5.0  # blank below a mean edge strength of THRESHOLD / GAIN = 0.1
SIZE = 32


def conv_weights():
    """Four oriented 3x3 edge filters, shape [4, 1, 3, 3]."""
    vertical_gradient = np.array([[-1, -1, -1],
                                  [0, 0, 0],
                                  [1, 1, 1]], dtype=np.float64) / 3.0  # horizontal edges
    horizontal_gradient = vertical_gradient.T                           # vertical edges
    w = np.stack([vertical_gradient, -vertical_gradient,
                  horizontal_gradient, -horizontal_gradient])
    return w[:, None, :, :]


def dense_weights():
    """Scores from the four mean edge strengths, shape [4, 4] and [4]."""
    u = np.array([1.0, 1.0, 0.0, 0.0])  # horizontal-edge channels
    v = np.array([0.0, 0.0, 1.0, 1.0])  # vertical-edge channels
    w = GAIN * np.stack([u - 0.6 * v, v - 0.6 * u, 0.6 * (u + v), np.zeros(4)])
    b = np.array([-THRESHOLD, -THRESHOLD, -THRESHOLD, 0.0])
    return w, b


def build_graph():
    conv_w = conv_weights()
    fc_w, fc_b = dense_weights()
    nodes = [
        node("conv2d", "conv1", ["input"], "edges",
             weights={"weight": conv_w, "bias": np.zeros(4)},
             kernel=(3, 3), stride=(1, 1), padding=(0, 0, 0, 0), dilation=(1, 1),
             groups=1, activation="relu"),
        node("avgpool2d", "pool1", ["edges"], "pooled",
             kernel=(2, 2), stride=(2, 2), padding=(0, 0, 0, 0), count_include_pad=0),
        node("globalavgpool", "gap", ["pooled"], "strength"),
        node("dense", "fc", ["strength"], "logits",
             weights={"weight": fc_w, "bias": fc_b}, activation="none"),
        node("softmax", "prob", ["logits"], "output", axis=1),
    ]
    return Graph(
        nodes=nodes,
        input_shape=(1, SIZE, SIZE),
        producer=f"cnnrt {__version__} (models/build_demo.py)",
        labels=list(LABELS),
        description=(
            "Fixed-weight demonstration model, not trained: oriented edge filters, "
            "average pooling and a hand-set dense layer tell horizontal stripes, "
            "vertical stripes, a checkerboard and a blank picture apart "
            "(1x32x32 grayscale input)."
        ),
        preprocess={"color": "L", "resize": [SIZE, SIZE], "scale": 1.0 / 255.0},
        meta={"weights": "hand-set (see models/build_demo.py)"},
    )


# --------------------------------------------------------------------------
# Sample pictures
# --------------------------------------------------------------------------

def sample_images():
    """name -> (PIL image, expected label).  Sizes differ from 32x32 on purpose."""
    yy, xx = np.mgrid[0:64, 0:64]
    dark, light = 40, 220
    horizontal = np.where((yy // 8) % 2 == 0, light, dark).astype(np.uint8)

    # vertical stripes in colour (blue / yellow), 72x60, to exercise RGB -> L
    vy, vx = np.mgrid[0:60, 0:72]
    band = ((vx // 9) % 2 == 0)[:, :, None]
    vertical = np.where(band, np.array([240, 220, 40]), np.array([30, 60, 200])).astype(np.uint8)

    checker = np.where(((yy // 8) + (xx // 8)) % 2 == 0, 235, 20).astype(np.uint8)

    rng = np.random.default_rng(7)
    blank = np.clip(200 + rng.normal(0, 3, (64, 64)), 0, 255).round().astype(np.uint8)
    return {
        "stripes_horizontal.png": (Image.fromarray(horizontal, "L"), "horizontal stripes"),
        "stripes_vertical.png": (Image.fromarray(vertical, "RGB"), "vertical stripes"),
        "checkerboard.png": (Image.fromarray(checker, "L"), "checkerboard"),
        "blank.png": (Image.fromarray(blank, "L"), "blank"),
    }


# --------------------------------------------------------------------------
# Float64 reference of the network
# --------------------------------------------------------------------------

def reference_forward(x):
    """The demo network in float64 NumPy; x is (1, 32, 32)."""
    w = conv_weights()
    h2, w2 = x.shape[1] - 2, x.shape[2] - 2
    edges = np.zeros((4, h2, w2))
    for i in range(3):
        for j in range(3):
            edges += w[:, 0, i, j][:, None, None] * x[0, i:i + h2, j:j + w2][None]
    edges = np.maximum(edges, 0.0)
    ph, pw = h2 // 2, w2 // 2
    pooled = edges[:, :ph * 2, :pw * 2].reshape(4, ph, 2, pw, 2).mean(axis=(2, 4))
    strength = pooled.mean(axis=(1, 2))
    fc_w, fc_b = dense_weights()
    logits = fc_w @ strength + fc_b
    e = np.exp(logits - logits.max())
    return e / e.sum()


def main():
    model_path = os.path.join(HERE, "demo.h5")
    samples_dir = os.path.join(HERE, "samples")
    os.makedirs(samples_dir, exist_ok=True)

    graph = build_graph()
    write_model(model_path, graph)
    print(f"wrote {os.path.relpath(model_path)}")

    try:
        import cnnrt
        model = cnnrt.load(model_path, threads=1)
    except ImportError as exc:
        print(f"cnnrt kernels not available ({exc}); checking with the float64 reference only")
        model = None

    failures = 0
    for name, (img, expected) in sample_images().items():
        path = os.path.join(samples_dir, name)
        img.save(path, optimize=True)
        x = load_image(path, graph.input_shape, graph.input_layout, graph.preprocess)
        ref = reference_forward(x.astype(np.float64))
        got = LABELS[int(ref.argmax())]
        line = f"{os.path.relpath(path)}: reference {got} ({ref.max():.4f})"
        ok = got == expected
        if model is not None:
            probs = model.predict_image(path)
            rt = LABELS[int(probs.argmax())]
            close = np.allclose(probs, ref, rtol=1e-4, atol=1e-5)
            line += f", cnnrt {rt} ({probs.max():.4f})"
            ok = ok and rt == expected and close
            if not close:
                line += f" [cnnrt {probs.tolist()} != reference {ref.tolist()}]"
        print(f"{line} -> {'ok' if ok else 'WRONG, expected ' + expected}")
        failures += not ok
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main())
