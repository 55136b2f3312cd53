"""Training speed: images per second of one training step, cnnrt.train vs PyTorch.

A training step is forward, softmax cross-entropy, backward and an SGD
(momentum 0.9) update on one batch.  The networks are the built-in
``cifar10`` architecture (CONV16-POOL-CONV20-POOL-CONV20-POOL-FC on
3x32x32, the classic small CIFAR-10 net) and, with ``--deep``, also
``cifar10-deep`` (conv-batchnorm-relu blocks, dropout).  PyTorch runs the
same layers when it is installed (``pip install torch==2.13.0``; CPU).

    python benchmarks/train_speed.py [--batch 64] [--threads 2] [--steps 30] [--deep]

Prints one line per framework and network, and the ratio cnnrt / PyTorch
(above 1: cnnrt is faster).  Each framework runs ``--repeats`` rounds of
``--steps`` steps after a warm-up, the two alternating round by round so
both see the same machine; the best round (the least disturbed by other
processes on shared cores) and the median are reported.
"""
import argparse
import statistics
import time

import numpy as np

from cnnrt.train import SGD, Sequential, build_layers
from cnnrt.train.layers import AvgPool2d, BatchNorm2d, Conv2d, Dense, Dropout, Flatten, MaxPool2d, ReLU

INPUT = (3, 32, 32)
CLASSES = 10


def _rate(step, batch, steps):
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    return batch * steps / (time.perf_counter() - t0)


def cnnrt_step(arch, batch, threads):
    net = Sequential(build_layers(arch, INPUT, CLASSES), input_shape=INPUT, seed=0, threads=threads)
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch,) + INPUT).astype(np.float32)
    y = rng.integers(0, CLASSES, batch)
    opt = SGD(lr=0.01, momentum=0.9, threads=threads)
    counter = [0]

    def step():
        counter[0] += 1
        net.train_step(x, y, opt, dropout_seed=counter[0])

    return step, net


def torch_model(net):
    """The same layers in PyTorch (weights need not match for a speed test)."""
    import torch.nn as nn

    mods = []
    shape = INPUT
    for layer in net.layers:
        if isinstance(layer, Conv2d):
            pt, pl, pb, pr = layer.padding
            assert pt == pb and pl == pr
            mods.append(nn.Conv2d(shape[0], layer.filters, layer.kernel, layer.stride, (pt, pl),
                                  layer.dilation, layer.groups, bias=layer.use_bias))
        elif isinstance(layer, Dense):
            mods.append(nn.Linear(int(np.prod(shape)), layer.units, bias=layer.use_bias))
        elif isinstance(layer, MaxPool2d):
            mods.append(nn.MaxPool2d(layer.kernel, layer.stride, layer.padding[:2]))
        elif isinstance(layer, AvgPool2d):
            mods.append(nn.AvgPool2d(layer.kernel, layer.stride, layer.padding[:2],
                                     count_include_pad=layer.count_include_pad))
        elif isinstance(layer, BatchNorm2d):
            mods.append(nn.BatchNorm2d(shape[0], eps=layer.eps, momentum=layer.momentum))
        elif isinstance(layer, ReLU):
            mods.append(nn.ReLU())
        elif isinstance(layer, Dropout):
            mods.append(nn.Dropout(layer.rate))
        elif isinstance(layer, Flatten):
            mods.append(nn.Flatten())
        shape = layer.out_shape
    return nn.Sequential(*mods)


def torch_step(net, batch, threads):
    import torch

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = torch_model(net)
    model.train()
    opt = torch.optim.SGD(model.parameters(), lr=0.01, momentum=0.9)
    loss_fn = torch.nn.CrossEntropyLoss()
    x = torch.randn((batch,) + INPUT)
    y = torch.randint(0, CLASSES, (batch,))

    def step():
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(model(x), y)
        loss.backward()
        opt.step()

    return step, torch.__version__


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--batch", type=int, default=64)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--steps", type=int, default=30)
    p.add_argument("--repeats", type=int, default=5)
    p.add_argument("--deep", action="store_true", help="also time cifar10-deep")
    args = p.parse_args(argv)

    archs = ["cifar10"] + (["cifar10-deep"] if args.deep else [])
    print(f"training step (forward + loss + backward + SGD update), batch {args.batch}, "
          f"{args.threads} threads, input {'x'.join(map(str, INPUT))}; images/s, "
          f"best and median of {args.repeats} rounds of {args.steps} steps")
    for arch in archs:
        ours, net = cnnrt_step(arch, args.batch, args.threads)
        try:
            theirs, version = torch_step(net, args.batch, args.threads)
        except ImportError:
            theirs, version = None, None
        steps = [("cnnrt.train", ours)] + ([(f"PyTorch {version}", theirs)] if theirs else [])
        rates = {name: [] for name, _ in steps}
        for name, step in steps:
            for _ in range(3):
                step()
        for _ in range(args.repeats):
            for name, step in steps:
                rates[name].append(_rate(step, args.batch, args.steps))
        for name, _ in steps:
            r = rates[name]
            print(f"  {arch:13s} {name:20s} best {max(r):7.0f}  median {statistics.median(r):7.0f}")
        if theirs is None:
            print(f"  {arch:13s} PyTorch not installed (pip install torch==2.13.0)")
            continue
        a, b = rates["cnnrt.train"], rates[f"PyTorch {version}"]
        print(f"  {arch:13s} ratio cnnrt.train / PyTorch: best {max(a) / max(b):.2f}, "
              f"median {statistics.median(a) / statistics.median(b):.2f}  "
              f"({net.n_params()} parameters)")


if __name__ == "__main__":
    main()
