"""cnnrt against ONNX Runtime and PyTorch, side by side in one process.

Builds the reference models in PyTorch with fixed random weights, exports
them to ONNX, converts the ONNX files with cnnrt's converter, checks that
the three engines agree (1e-4 relative), then times each engine on the same
input.  Engines are timed in alternating blocks of calls with a pause
between blocks: thread pools keep spinning for a while after a call, and
alternating call by call would let one engine's spinning threads steal the
other's cores.  A second ONNX Runtime session is timed like a third engine
as a check of the harness: its ratio to the first should be close to 1.
The table gives median times and their ratios, the ratio of the fastest
calls ("cnnrt/ORT best"), and the median over rounds of the ratio of the
two engines' block medians in the same round ("cnnrt/ORT paired"); the last
two move less when other work on a shared machine slows some blocks down.

    python benchmarks/peers.py                 # every model, batch 1 and 16, 2 and 1 threads
    python benchmarks/peers.py --models resnet18 --batch 1 --threads 2
    python benchmarks/peers.py --smoke         # seconds: tiny run that keeps the script working
    python benchmarks/peers.py --markdown out.md

Needs torch (pip install torch==2.13.0), onnx and onnxruntime; whatever is
missing is reported and skipped.
"""
import argparse
import os
import platform
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))


# --------------------------------------------------------------------------
# Reference models
# --------------------------------------------------------------------------

def build_models(nn):
    """Return {name: (constructor, input shape CHW)} built on torch.nn."""
    import torch

    class CifarNet(nn.Module):
        """INPUT-[CONV-RELU-POOL]x3-FC on 3x32x32."""

        def __init__(self):
            super().__init__()
            layers = []
            c = 3
            for k in (32, 64, 128):
                layers += [nn.Conv2d(c, k, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2, 2)]
                c = k
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(128 * 4 * 4, 10)

        def forward(self, x):
            return self.fc(torch.flatten(self.features(x), 1))

    class AlexNetBlock1(nn.Module):
        """227x227x3, 96 filters 11x11 stride 4, ReLU, 3x3/2 max pool."""

        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 96, 11, stride=4)
            self.pool = nn.MaxPool2d(3, 2)

        def forward(self, x):
            return self.pool(torch.relu(self.conv(x)))

    def conv_bn(cin, cout, k, stride, groups=1, act=nn.ReLU):
        layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                  nn.BatchNorm2d(cout)]
        if act is not None:
            layers.append(act())
        return nn.Sequential(*layers)

    class BasicBlock(nn.Module):
        def __init__(self, cin, cout, stride):
            super().__init__()
            self.body = nn.Sequential(conv_bn(cin, cout, 3, stride), conv_bn(cout, cout, 3, 1, act=None))
            self.down = (conv_bn(cin, cout, 1, stride, act=None)
                         if stride != 1 or cin != cout else None)

        def forward(self, x):
            skip = x if self.down is None else self.down(x)
            return torch.relu(self.body(x) + skip)

    class ResNet18(nn.Module):
        def __init__(self):
            super().__init__()
            self.stem = nn.Sequential(conv_bn(3, 64, 7, 2), nn.MaxPool2d(3, 2, 1))
            blocks, c = [], 64
            for k, s in ((64, 1), (64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1)):
                blocks.append(BasicBlock(c, k, s))
                c = k
            self.blocks = nn.Sequential(*blocks)
            self.fc = nn.Linear(512, 1000)

        def forward(self, x):
            x = self.blocks(self.stem(x))
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class MobileNetV1(nn.Module):
        def __init__(self):
            super().__init__()
            cfg = [(32, 64, 1), (64, 128, 2), (128, 128, 1), (128, 256, 2), (256, 256, 1),
                   (256, 512, 2)] + [(512, 512, 1)] * 5 + [(512, 1024, 2), (1024, 1024, 1)]
            layers = [conv_bn(3, 32, 3, 2)]
            for cin, cout, s in cfg:
                layers += [conv_bn(cin, cin, 3, s, groups=cin), conv_bn(cin, cout, 1, 1)]
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(1024, 1000)

        def forward(self, x):
            x = self.features(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    class MBConv(nn.Module):
        def __init__(self, cin, cout, expand, k, stride):
            super().__init__()
            mid = cin * expand
            layers = [conv_bn(cin, mid, 1, 1, act=nn.ReLU6)] if expand != 1 else []
            layers += [conv_bn(mid, mid, k, stride, groups=mid, act=nn.ReLU6),
                       conv_bn(mid, cout, 1, 1, act=None)]
            self.body = nn.Sequential(*layers)
            self.residual = stride == 1 and cin == cout

        def forward(self, x):
            y = self.body(x)
            return x + y if self.residual else y

    class EfficientNetLite0(nn.Module):
        """EfficientNet-Lite0 shape: ReLU6, depthwise 3x3 and 5x5, no squeeze-excite."""

        def __init__(self):
            super().__init__()
            cfg = [(1, 16, 1, 1, 3), (6, 24, 2, 2, 3), (6, 40, 2, 2, 5), (6, 80, 3, 2, 3),
                   (6, 112, 3, 1, 5), (6, 192, 4, 2, 5), (6, 320, 1, 1, 3)]
            layers = [conv_bn(3, 32, 3, 2, act=nn.ReLU6)]
            c = 32
            for e, k_out, n, s, k in cfg:
                for i in range(n):
                    layers.append(MBConv(c, k_out, e, k, s if i == 0 else 1))
                    c = k_out
            layers.append(conv_bn(c, 1280, 1, 1, act=nn.ReLU6))
            self.features = nn.Sequential(*layers)
            self.fc = nn.Linear(1280, 1000)

        def forward(self, x):
            x = self.features(x)
            return self.fc(torch.flatten(nn.functional.adaptive_avg_pool2d(x, 1), 1))

    return {
        "cifar10": (CifarNet, (3, 32, 32)),
        "alexnet_block1": (AlexNetBlock1, (3, 227, 227)),
        "resnet18": (ResNet18, (3, 224, 224)),
        "mobilenet_v1": (MobileNetV1, (3, 224, 224)),
        "efficientnet_lite0": (EfficientNetLite0, (3, 224, 224)),
    }


def randomize(model, torch, seed):
    """Fixed random weights, with batchnorm statistics that are not trivial."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for mod in model.modules():
            if isinstance(mod, torch.nn.BatchNorm2d):
                c = mod.num_features
                mod.weight.copy_(0.5 + torch.rand(c, generator=gen))
                mod.bias.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_mean.copy_(0.1 * torch.randn(c, generator=gen))
                mod.running_var.copy_(0.5 + torch.rand(c, generator=gen))
    model.eval()
    return model


# --------------------------------------------------------------------------
# Timing
# --------------------------------------------------------------------------

def time_engines(engines, block_calls, rounds, pause):
    """Median and fastest seconds per call of each engine, timed in alternating
    blocks, and each engine's median per block (one list per round)."""
    samples = {name: [] for name in engines}
    blocks = {name: [] for name in engines}
    for fn in engines.values():  # warm-up
        for _ in range(3):
            fn()
    for _ in range(rounds):
        for name, fn in engines.items():
            block = []
            for _ in range(block_calls):
                t0 = time.perf_counter()
                fn()
                block.append(time.perf_counter() - t0)
            samples[name] += block
            blocks[name].append(float(np.median(block)))
            time.sleep(pause)
    return ({name: float(np.median(v)) for name, v in samples.items()},
            {name: float(np.min(v)) for name, v in samples.items()},
            blocks)


def paired_ratio(blocks, a, b):
    """Median over rounds of engine a's block median over engine b's in the
    same round: blocks a second apart share the machine's slow stretches."""
    if a not in blocks or b not in blocks:
        return float("nan")
    return float(np.median(np.array(blocks[a]) / np.array(blocks[b])))


def rel_err(a, b):
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-30))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--models", nargs="*", default=None, help="subset of model names")
    ap.add_argument("--batch", type=int, nargs="*", default=[1, 16])
    ap.add_argument("--threads", type=int, nargs="*", default=[2, 1])
    ap.add_argument("--rounds", type=int, default=7, help="alternating blocks per engine")
    ap.add_argument("--seconds", type=float, default=0.25, help="target length of one block")
    ap.add_argument("--pause", type=float, default=0.1, help="pause between blocks (s)")
    ap.add_argument("--smoke", action="store_true", help="tiny quick run (CI)")
    ap.add_argument("--markdown", help="also write the table to this file")
    args = ap.parse_args(argv)

    import cnnrt

    try:
        import torch
    except ImportError:
        print("skipped: torch is not installed (pip install torch==2.13.0); "
              "the reference models are built with it")
        return 0
    try:
        import onnx  # noqa: F401
        from cnnrt.convert import from_onnx
    except ImportError as exc:
        print(f"skipped: the ONNX converter is unavailable ({exc}); pip install onnx")
        return 0
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
        print("skipped: onnxruntime is not installed; no ONNX Runtime columns")

    if args.smoke:
        args.models = args.models or ["cifar10"]
        args.batch, args.threads, args.rounds, args.seconds, args.pause = [1], [1], 2, 0.02, 0.0
    models = build_models(torch.nn)
    names = args.models or list(models)
    for name in names:
        if name not in models:
            ap.error(f"unknown model {name!r}; choose from {', '.join(models)}")

    print(f"cnnrt {cnnrt.__version__} ({cnnrt.get_isa()} kernels), torch {torch.__version__}, "
          f"onnxruntime {ort.__version__ if ort else '-'}, {platform.processor() or platform.machine()}, "
          f"{os.cpu_count()} cores")
    header = ("| model | batch | threads | cnnrt ms | ORT ms | torch ms | cnnrt/ORT | "
              "cnnrt/ORT best | cnnrt/ORT paired | cnnrt/torch | ORT2/ORT | max rel. diff |")
    rows = [header, "|" + "---|" * 12]
    print(rows[0])
    print(rows[1])
    worst = 0.0
    tmp = tempfile.mkdtemp(prefix="cnnrt-bench-")
    for name in names:
        ctor, shape = models[name]
        torch.manual_seed(0)
        model = randomize(ctor(), torch, seed=0)
        onnx_path = os.path.join(tmp, name + ".onnx")
        h5_path = os.path.join(tmp, name + ".h5")
        example = torch.randn(1, *shape)
        torch.onnx.export(model, example, onnx_path, input_names=["input"],
                          output_names=["output"], dynamic_axes={"input": {0: "N"}, "output": {0: "N"}},
                          dynamo=False)
        from_onnx(onnx_path, h5_path, input_shape=shape)
        for threads in args.threads:
            torch.set_num_threads(threads)
            cm = cnnrt.load(h5_path, threads=threads)
            sessions = []
            if ort is not None:
                for _ in range(2):
                    so = ort.SessionOptions()
                    so.intra_op_num_threads = threads
                    so.inter_op_num_threads = 1
                    sessions.append(ort.InferenceSession(onnx_path, so, providers=["CPUExecutionProvider"]))
            for batch in args.batch:
                x = np.random.default_rng(1).standard_normal((batch, *shape)).astype(np.float32)
                xt = torch.from_numpy(x)
                with torch.no_grad():
                    ref = model(xt).numpy()
                got = cm.predict(x)
                diffs = [rel_err(got, ref)]
                if sessions:
                    diffs.append(rel_err(sessions[0].run(None, {"input": x})[0], ref))
                diff = max(diffs)
                status = "" if diff <= 1e-4 else "  DISAGREE"
                engines = {"cnnrt": lambda: cm.predict(x)}
                if sessions:
                    engines["ort"] = lambda: sessions[0].run(None, {"input": x})
                    engines["ort2"] = lambda: sessions[1].run(None, {"input": x})

                def torch_call():
                    with torch.no_grad():
                        model(xt)
                engines["torch"] = torch_call
                t0 = time.perf_counter()
                cm.predict(x)
                one = max(time.perf_counter() - t0, 1e-5)
                block = max(1, int(args.seconds / one))
                med, best, blocks = time_engines(engines, block, args.rounds, args.pause)
                ms = {k: 1e3 * v for k, v in med.items()}
                r_ort = ms["cnnrt"] / ms["ort"] if "ort" in ms else float("nan")
                r_best = best["cnnrt"] / best["ort"] if "ort" in best else float("nan")
                r_paired = paired_ratio(blocks, "cnnrt", "ort")
                r_torch = ms["cnnrt"] / ms["torch"]
                r_check = ms["ort2"] / ms["ort"] if "ort2" in ms else float("nan")
                if r_ort == r_ort:
                    worst = max(worst, r_ort)
                row = (f"| {name} | {batch} | {threads} | {ms['cnnrt']:.2f} | "
                       f"{ms.get('ort', float('nan')):.2f} | {ms['torch']:.2f} | {r_ort:.2f} | "
                       f"{r_best:.2f} | {r_paired:.2f} | {r_torch:.2f} | {r_check:.2f} | "
                       f"{diff:.1e}{status} |")
                rows.append(row)
                print(row, flush=True)
    if worst:
        print(f"\nworst cnnrt/ORT ratio: {worst:.2f}")
    if args.markdown:
        with open(args.markdown, "w") as fh:
            fh.write("\n".join(rows) + "\n")
            if worst:
                fh.write(f"\nWorst cnnrt/ORT ratio: {worst:.2f}\n")
    bad = [r for r in rows if "DISAGREE" in r]
    if bad:
        print(f"{len(bad)} row(s) where the engines disagree by more than 1e-4", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
