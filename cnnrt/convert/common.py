"""What every converter shares: metadata presets, the report, writing the result."""
import datetime
from dataclasses import dataclass, field
from typing import Dict, List, Optional, Sequence

from .. import __version__
from ..format import Graph, validate, write_model

# Named preprocessing presets for ``--preprocess`` (FORMAT.md /meta/preprocess).
# Pixel values are 0..255 after decoding; ``scale`` is applied before mean/std.
PREPROCESS_PRESETS: Dict[str, Optional[Dict[str, object]]] = {
    "none": None,
    # torchvision / most ImageNet models: x/255, then per-channel mean and std
    "imagenet": {"color": "RGB", "scale": 1.0 / 255.0,
                 "mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]},
    # Caffe-style ImageNet models: raw 0..255 pixels minus the channel means
    "caffe": {"color": "RGB", "scale": 1.0, "mean": [123.68, 116.78, 103.94]},
    # pixels scaled to 0..1
    "unit": {"scale": 1.0 / 255.0},
    # pixels scaled to -1..1 (MobileNet / Inception convention)
    "tf": {"scale": 1.0 / 127.5, "mean": [1.0]},
}


@dataclass
class ConversionReport:
    """What a conversion produced: the graph written and what was done to it."""

    source: str                       # "onnx", "keras", "torch", ...
    graph: Graph
    path: Optional[str] = None        # the file written
    notes: List[str] = field(default_factory=list)   # what was folded or rewritten

    def summary(self) -> str:
        g = self.graph
        counts: Dict[str, int] = {}
        for n in g.nodes:
            counts[n.op] = counts.get(n.op, 0) + 1
        params = sum(int(w.size) for n in g.nodes for w in n.weights.values())
        lines = [
            f"converted from {self.source}" + (f" to {self.path}" if self.path else ""),
            f"input {g.inputs[0]} {list(g.input_shape)} {g.input_layout}, "
            f"{len(g.nodes)} nodes, {params:,} parameters",
            "ops: " + ", ".join(f"{op} x{c}" for op, c in sorted(counts.items())),
        ]
        if g.labels is not None:
            lines.append(f"labels: {len(g.labels)}")
        if g.preprocess is not None:
            lines.append("preprocess: " + ", ".join(f"{k}={v}" for k, v in g.preprocess.items()))
        lines.extend(f"  {note}" for note in self.notes)
        return "\n".join(lines)


def resolve_preprocess(preprocess, input_shape) -> Optional[Dict[str, object]]:
    """A preset name, a dict or None -> a preprocess dict that fits ``input_shape`` (C, H, W)."""
    if preprocess is None:
        return None
    if isinstance(preprocess, str):
        if preprocess not in PREPROCESS_PRESETS:
            raise ValueError(f"unknown preprocess preset {preprocess!r}; expected one of "
                             + ", ".join(sorted(PREPROCESS_PRESETS)))
        pre = PREPROCESS_PRESETS[preprocess]
        if pre is None:
            return None
        pre = dict(pre)
    elif isinstance(preprocess, dict):
        pre = dict(preprocess)
    else:
        raise ValueError(f"preprocess must be a preset name or a dict, got {type(preprocess).__name__}")
    channels = input_shape[0]
    if "color" not in pre:
        pre["color"] = "RGB" if channels == 3 else "L" if channels == 1 else None
        if pre["color"] is None:
            del pre["color"]
    elif (pre["color"] == "RGB") != (channels == 3):
        raise ValueError(f"preprocess color {pre['color']} does not fit an input of {channels} channel(s)")
    pre.setdefault("resize", [int(input_shape[1]), int(input_shape[2])])
    for key in ("mean", "std"):
        if key in pre and len(pre[key]) not in (1, channels):
            raise ValueError(f"preprocess {key} has {len(pre[key])} values for {channels} channel(s)")
    return pre


def read_labels(labels) -> Optional[List[str]]:
    """None, a sequence of names, or a path to a text file with one label per line."""
    if labels is None:
        return None
    if isinstance(labels, (str, bytes)) or hasattr(labels, "__fspath__"):
        try:
            with open(labels, encoding="utf-8") as fh:
                names = [line.rstrip("\r\n") for line in fh]
        except OSError as e:
            raise ValueError(f"cannot read labels file {labels}: {e.strerror or e}") from None
        while names and not names[-1].strip():
            names.pop()
        return names
    return [str(x) for x in labels]


def finish(graph: Graph, dst, source: str, notes: Sequence[str] = (), labels=None,
           preprocess=None, meta: Optional[Dict[str, object]] = None) -> ConversionReport:
    """Attach metadata, validate, and write ``graph`` atomically to ``dst``.

    Nothing is written when any step fails.
    """
    names = read_labels(labels)
    if names is not None:
        graph.labels = names
    pre = resolve_preprocess(preprocess, graph.input_shape)
    if pre is not None:
        graph.preprocess = pre
    graph.producer = f"cnnrt {__version__} (converted from {source})"
    graph.meta = dict(graph.meta)
    graph.meta.setdefault("source_format", source)
    graph.meta.setdefault("converted", datetime.datetime.now(datetime.timezone.utc)
                          .isoformat(timespec="seconds"))
    if meta:
        graph.meta.update(meta)
    validate(graph)   # also checks that the labels fit the output
    if dst is not None:
        write_model(dst, graph)
    return ConversionReport(source, graph, None if dst is None else str(dst), list(notes))
