"""Loading a model and running it: the execution plan and the Model API.

``load`` reads and validates a file (``cnnrt.format``); :class:`Model` turns
the graph into an execution plan once: every tensor's shape, a memory plan
that reuses activation buffers (liveness-based, with in-place element-wise
ops and free flattens), and weights prepared for the kernels.  ``predict``
then enters compiled code once per call and runs the whole graph there with
the GIL released.
"""
import os
import threading
from dataclasses import replace
from math import prod
from typing import Dict, List, Optional, Tuple

import numpy as np

from . import _engine
from .format import DEFAULT_MEMORY_LIMIT, Graph, Node, read_model, validate
from .ops import OPS, softmax_axis

ALIGN = 16  # floats; keeps every tensor 64-byte aligned for any batch size

# Winograd F(4x4, 3x3) for eligible convolutions; CNNRT_WINOGRAD=0 turns it
# off (for comparisons, and for tests of the direct kernels).
USE_WINOGRAD = os.environ.get("CNNRT_WINOGRAD", "1").strip() not in ("0", "false", "no", "off")
# Fewest 4x4 output tiles per image for which a layer runs as Winograd.
WINOGRAD_MIN_TILES = 8
WINOGRAD_CACHED_BYTES = 2 << 20
# GEMM convolutions read their input in place (no packing) unless the grid
# they read wastes more than this share of the work packing would do;
# CNNRT_DIRECT=0 turns it off (for comparisons, and tests of the packed kernels).
USE_DIRECT = os.environ.get("CNNRT_DIRECT", "1").strip() not in ("0", "false", "no", "off")
DIRECT_MIN_EFFICIENCY = 0.8
DIRECT_SHARED_WEIGHTS = 1 << 20
# Depthwise convolutions with one output per input channel can run 16
# channels at a time on ISAs that have that kernel (AVX-512): "auto" where
# that measured faster than plane by plane (see dw16_wins), "always", "never".
DEPTHWISE_16 = "auto"
# 1x1 stride-1 convolutions pack: their taps are whole input planes apart,
# and packing (with prefetching) streams them better than the micro-kernel.
DIRECT_POINTWISE = False
# GEMM convolutions with at most this many output positions per image pack
# their input once per call into space shared by the threads, if the packed
# input of one image is at most SHARED_PACK_FLOATS.
SHARED_PACK_POSITIONS = 1024
SHARED_PACK_FLOATS = 1 << 20
# Convolutions with vectors along output channels (see rows_wins):
# "auto", "always" (every one-group convolution that is not Winograd) or
# "never"; ROWS_TILE_FLOATS of private space per thread hold a task's tiles
# (16 runs of 8 positions by up to 48 channels).
CONV_ROWS = "auto"
ROWS_TILE_FLOATS = 16 * 8 * 48
# The last layers of a graph run on the whole batch at once (see
# Model._tail_start) where that saves re-reading at least this many bytes of
# weights per sample beyond the activations it keeps out of cache; their
# chunks of samples are up to this many times the size of the others'.
TAIL_MIN_GAIN = 1 << 18
TAIL_CHUNK_FACTOR = 16
# Chains of depthwise and pointwise (1x1 stride-1) convolutions keep their
# activations channel-blocked, [C/16][H][W][16] per image (see
# Model._c16_chains): "auto" where the AVX-512 kernels run, for chains with a
# depthwise layer and at least two convolutions; "always" for every such
# convolution; "never".
C16 = "auto"
# Channel-blocked pointwise convolutions with three, or five or more, blocks
# of 16 output channels use panels of 48 channels (see pw_panels).
PW_PANELS48 = True
_C16_ACTS = ("none", "relu", "relu6")
# 2x2 stride-2 max pools after Winograd convolutions run inside the
# convolution's output transform (see Model._pool_fuses): "auto" or "never".
POOL_FUSION = "auto"
_C16_ELEMENTWISE = ("add", "relu", "clip", "leaky_relu", "sigmoid", "tanh")

if os.environ.get("CNNRT_ISA"):
    _engine.set_isa(os.environ["CNNRT_ISA"].strip().lower())


def get_isa() -> str:
    """The kernel variant in use: ``scalar``, ``avx2`` or ``avx512``."""
    return _engine.get_isa()


def set_isa(name: str) -> None:
    """Use the kernel variant ``name`` (``scalar``, ``avx2``, ``avx512``) from now on.

    The default is the fastest one the CPU supports; the environment variable
    ``CNNRT_ISA`` sets it at import.  Raises ValueError for a variant the CPU
    cannot run.
    """
    _engine.set_isa(name)

# Element-wise ops that may write their output over their (dying) first input.
_IN_PLACE = {"relu", "sigmoid", "tanh", "leaky_relu", "clip", "batchnorm2d", "add"}


def pack_conv_weights(weight: np.ndarray, groups: int) -> np.ndarray:
    """Reorder conv weights [K, C/g, kh, kw] into GEMM panels.

    Layout [groups, panels, Q, MR]: for each group, output channels in panels
    of MR (the last one zero-padded), each panel step-major over the
    Q = C/g*kh*kw taps, as the micro-kernels read them.
    """
    K = weight.shape[0]
    Kg = K // groups
    Q = int(np.prod(weight.shape[1:]))
    mr = _engine.GEMM_MR
    panels = -(-Kg // mr)
    padded = np.zeros((groups, panels * mr, Q), dtype=np.float32)
    padded[:, :Kg] = weight.reshape(groups, Kg, Q)
    return np.ascontiguousarray(padded.reshape(groups, panels, mr, Q).transpose(0, 1, 3, 2))


# Winograd F(4x4, 3x3) weight transform G (6x3), points 0, +-1, +-2.
_WINO_G = np.array([
    [1 / 4, 0, 0],
    [-1 / 6, -1 / 6, -1 / 6],
    [-1 / 6, 1 / 6, -1 / 6],
    [1 / 24, 1 / 12, 1 / 6],
    [1 / 24, -1 / 12, 1 / 6],
    [0, 0, 1],
], dtype=np.float64)


def winograd_eligible(attrs, C, K, H2, W2) -> bool:
    """Whether a conv2d runs as Winograd F(4x4, 3x3).

    Winograd needs 4x the weight memory of the direct kernel (36 transformed
    values per 3x3 filter), all of which every call reads.  With fewer than
    ``WINOGRAD_MIN_TILES`` tiles per image (8: outputs smaller than about
    12x12) it saves few multiplications and the weight traffic dominates, so
    those layers run direct, unless they have at least half that many tiles
    and transformed weights small enough to stay in cache
    (``WINOGRAD_CACHED_BYTES``).
    """
    tiles = -(-H2 // 4) * -(-W2 // 4)
    enough = tiles >= WINOGRAD_MIN_TILES or (
        tiles >= WINOGRAD_MIN_TILES // 2 and 36 * C * K * 4 <= WINOGRAD_CACHED_BYTES)
    return (USE_WINOGRAD and tuple(attrs["kernel"]) == (3, 3)
            and tuple(attrs["stride"]) == (1, 1) and tuple(attrs["dilation"]) == (1, 1)
            and attrs["groups"] == 1 and C >= 16 and K >= 16 and enough)


def direct_grid(attrs, C, H, W, H2, W2, groups):
    """How a GEMM convolution reads its input in place, or None to pack it.

    The input is read as a grid of planes in which every tap of a run of
    output positions is one contiguous stretch: the input itself for 1x1
    stride-1 unpadded convolutions (only with ``DIRECT_POINTWISE``), a
    zero-padded copy for other stride-1 ones, and the stride phases
    otherwise.  Output (oy, ox) is grid position oy * gw + ox, and the grid
    columns past W2 are computed and dropped, so narrow outputs with wide
    padding waste work; those are packed instead.
    Returns the step fields (gw, gplane, gimage, gprep, toff and, for
    phases, th and tw).
    """
    if not USE_DIRECT:
        return None
    kh, kw = attrs["kernel"]
    sh, sw = attrs["stride"]
    dh, dw = attrs.get("dilation", (1, 1))
    pt, pl, pb, pr = attrs["padding"]
    cg = C // groups
    c = np.arange(cg).reshape(-1, 1, 1)
    ky = np.arange(kh).reshape(1, -1, 1) * dh
    kx = np.arange(kw).reshape(1, 1, -1) * dw
    fields = {}
    if (sh, sw) == (1, 1):
        if (kh, kw) == (1, 1) and (pt, pl, pb, pr) == (0, 0, 0, 0):
            if not DIRECT_POINTWISE:
                return None
            gprep, gw, gplane = 0, W, H * W
        else:
            gprep, gw = 1, W + pl + pr
            gplane = (H + pt + pb) * gw
        toff = c * gplane + ky * gw + kx
    else:
        hq, wq = -(-(H + pt + pb) // sh), -(-(W + pl + pr) // sw)
        gprep, gw, gplane = 2, wq, sh * sw * hq * wq
        toff = (((c * sh + ky % sh) * sw + kx % sw) * hq * wq + (ky // sh) * wq + kx // sw)
        fields.update(th=hq, tw=wq)
    nr = _engine.GEMM_NR
    P = H2 * W2
    eff_direct = P / (-(-(H2 * gw) // nr) * nr)
    eff_packed = P / (-(-P // nr) * nr)
    if eff_direct < DIRECT_MIN_EFFICIENCY * eff_packed:
        return None
    slack = (kh * dh + 1) * gw + kw * dw + 2 * nr
    fields.update(gw=gw, gplane=gplane, gimage=C * gplane + slack if gprep else 0,
                  gprep=gprep, toff=toff.reshape(-1).astype(np.intp))
    return fields


def rows_input(attrs, C, H, W):
    """How a convolution with vectors along output channels reads its input.

    Tap q = (c, ky, kx) of output (oy, ox) is the input element at
    oy * sh * gw + ox * sw + toff[q] of the input itself (no padding,
    gprep 0) or of its zero-padded copy (gprep 1), planes gplane apart.
    """
    kh, kw = attrs["kernel"]
    dh, dw = attrs.get("dilation", (1, 1))
    pt, pl, pb, pr = attrs["padding"]
    gw, hp = W + pl + pr, H + pt + pb
    gprep = 0 if (pt, pl, pb, pr) == (0, 0, 0, 0) else 1
    c = np.arange(C).reshape(-1, 1, 1)
    ky = np.arange(kh).reshape(1, -1, 1) * dh
    kx = np.arange(kw).reshape(1, 1, -1) * dw
    toff = (c * hp * gw + ky * gw + kx).reshape(-1).astype(np.intp)
    return {"gw": gw, "gplane": hp * gw, "gimage": C * hp * gw if gprep else 0,
            "gprep": gprep, "toff": toff}


def pw_run_length(positions: int) -> int:
    """Positions per run of the channel-blocked pointwise kernel on a map.

    Runs of 8 positions, unless runs of 7 or 6 leave at least 5% fewer
    slots empty in the last run (a 7x7 map: seven runs of 7, 49 slots,
    against 56 in runs of 8); a run costs about its slots.
    """
    def slots(n):
        return -(-positions // n) * n
    best = 8
    for n in (7, 6):
        if slots(n) <= 0.95 * slots(best):
            best = n
    return best


def rows_panel(K: int) -> int:
    """Output channels per weight panel of a convolution with vectors along
    output channels: 48 where panels of 48 leave no more empty channels than
    panels of 32 (K = 40, 48, 96, 144, ...), else 32.

    The 8x48 tile holds 24 accumulators and loads one value per two
    multiply-adds (the 8x32 tile: 11 per 16), which measured 6-17% faster
    in a C loop over an 11x11 stride-4 stem.
    """
    if K > 32 and -(-K // 48) * 48 <= -(-K // 32) * 32:
        return 48
    return 32


def pw_panels(K: int) -> List[int]:
    """Widths of the weight panels of a channel-blocked pointwise convolution.

    Panels of 48 channels (three blocks of 16), then one or two of 32, so
    that the panels cover exactly the ceil(K / 16) blocks: 512 channels are
    ten panels of 48 and one of 32, 256 four of 48 and two of 32, 48 one
    of 48.  Layers of one, two or four blocks, and every layer when
    PW_PANELS48 is off, keep panels of 32.  The 48-channel tile loads one value per two multiply-adds
    (the 32-channel one: nine or ten per 14 or 16) and reads each input
    position for fewer panels; over MobileNet v1's 512-channel 14x14 layer
    in a C loop it measured 13-16% faster.
    """
    k16 = -(-K // 16)
    b = (0, 2, 1)[k16 % 3]
    a = (k16 - 2 * b) // 3
    if not PW_PANELS48 or a < 1:
        return [32] * -(-K // 32)
    return [48] * a + [32] * b


def pack_pointwise_panels(weight: np.ndarray, bias, widths: List[int]):
    """Pointwise weights [K, C, 1, 1] as B panels of the given widths, each
    [C][width] (channels past K zero), one after another, and the biases of
    every panel, zero-padded, one after another."""
    K, C = weight.shape[:2]
    total = sum(widths)
    wt = np.zeros((total, C), np.float32)
    wt[:K] = weight.reshape(K, C)
    b = np.zeros(total, np.float32)
    if bias is not None:
        b[:K] = bias
    parts, k0 = [], 0
    for width in widths:
        parts.append(wt[k0:k0 + width].T.reshape(-1))
        k0 += width
    return np.ascontiguousarray(np.concatenate(parts)), b


def rows_wins(attrs, C, K, H2, W2) -> bool:
    """Whether a one-group convolution runs with vectors along output channels.

    Forced by CONV_ROWS ("always", "never").  Otherwise by how well each
    orientation fills its tiles: runs of 8 positions along output rows by NR
    channels, against NR positions by MR channels.  A strided convolution
    otherwise reads its input as stride phases or packs it tap by tap, and
    measured faster this way even at a somewhat lower fill.  A stride-1 one
    with more than one tap per input channel measured faster at the same
    fill or better (its other path copies tiles out to the output rows);
    1x1 stride-1 ones stay packed.  Where the transposed orientation would
    be chosen (it packs positions across rows: maps a few positions wide)
    and fills much better, it is left to that.
    """
    if CONV_ROWS in ("always", "never"):
        return CONV_ROWS == "always"
    mr, nr = _engine.GEMM_MR, _engine.GEMM_NR
    P = H2 * W2
    rows = W2 / (-(-W2 // mr) * mr) * K / (-(-K // rows_panel(K)) * rows_panel(K))
    normal = P / (-(-P // nr) * nr) * K / (-(-K // mr) * mr)
    transposed = P / (-(-P // mr) * mr) * K / (-(-K // nr) * nr)
    strided = tuple(attrs["stride"]) != (1, 1)
    if not strided and tuple(attrs["kernel"]) == (1, 1):
        return False  # packed pointwise measured as fast or faster at every fill
    if conv_transposed(P, K) and rows < 0.9 * transposed:
        return False
    factor = 0.8 if strided else 1.0
    return rows >= factor * normal


def dw16_wins(attrs, W2) -> bool:
    """Whether a multiplier-1 depthwise layer runs 16 channels at a time.

    Plane by plane, vectors run along output rows, so narrow outputs (up to
    8 wide) waste most lanes; those layers measured faster with the channels
    in the lanes.  Elsewhere the transposes in and out cost more than they
    save.
    """
    if DEPTHWISE_16 in ("always", "never"):
        return DEPTHWISE_16 == "always"
    return W2 <= 8


def depthwise_weights16(weight: np.ndarray, bias) -> Tuple[np.ndarray, np.ndarray]:
    """Depthwise taps as [K/16][kh*kw][16] and biases as [K/16 * 16], zero-padded."""
    K = weight.shape[0]
    kk = weight.shape[2] * weight.shape[3]
    groups16 = -(-K // 16)
    w16 = np.zeros((groups16 * 16, kk), np.float32)
    w16[:K] = weight.reshape(K, kk)
    b16 = np.zeros(groups16 * 16, np.float32)
    if bias is not None:
        b16[:K] = bias
    return np.ascontiguousarray(w16.reshape(groups16, 16, kk).transpose(0, 2, 1)), b16


def panel_biases(bias, K: int, nr: Optional[int] = None) -> np.ndarray:
    """Biases of every nr-wide panel of output channels (GEMM_NR unless
    given), zero-padded."""
    nr = nr or _engine.GEMM_NR
    b = np.zeros(-(-K // nr) * nr, np.float32)
    if bias is not None:
        b[:K] = bias
    return b


def pack_winograd_weights(weight: np.ndarray) -> np.ndarray:
    """Transform 3x3 weights [K, C, 3, 3] to U = G g G^T, packed as GEMM B panels.

    Layout [36, ceil(K/NR), C, NR]: for each of the 36 tile positions, the
    output channels in panels of NR (the last one zero-padded), step-major
    over the input channels.  Computed in double precision.
    """
    K, C = weight.shape[:2]
    nr = _engine.GEMM_NR
    u = np.einsum("ia,kcab,jb->ijck", _WINO_G, weight.astype(np.float64), _WINO_G)
    u = u.reshape(36, C, K)
    n_kb = -(-K // nr)
    padded = np.zeros((36, C, n_kb * nr), dtype=np.float64)
    padded[:, :, :K] = u
    packed = padded.reshape(36, C, n_kb, nr).transpose(0, 2, 1, 3)
    return np.ascontiguousarray(packed, dtype=np.float32)


def pack_conv_weights_t(weight: np.ndarray, groups: int, nr: Optional[int] = None) -> np.ndarray:
    """Conv weights [K, C/g, kh, kw] as GEMM B panels for the transposed orientation.

    Layout [groups, ceil(Kg/NR), Q, NR]: output channels in panels of NR
    (GEMM_NR unless given; the last one zero-padded), step-major over the
    Q = C/g*kh*kw taps.
    """
    K = weight.shape[0]
    Kg = K // groups
    Q = int(np.prod(weight.shape[1:]))
    nr = nr or _engine.GEMM_NR
    n_kb = -(-Kg // nr)
    padded = np.zeros((groups, n_kb * nr, Q), dtype=np.float32)
    padded[:, :Kg] = weight.reshape(groups, Kg, Q)
    return np.ascontiguousarray(padded.reshape(groups, n_kb, nr, Q).transpose(0, 1, 3, 2))


def conv_transposed(P: int, Kg: int) -> bool:
    """Whether a GEMM convolution fills the tiles better with vectors along channels."""
    mr, nr = _engine.GEMM_MR, _engine.GEMM_NR
    normal = P / (-(-P // nr) * nr) * Kg / (-(-Kg // mr) * mr)
    transposed = P / (-(-P // mr) * mr) * Kg / (-(-Kg // nr) * nr)
    # at equal fill the transposed orientation measures slower (short packing
    # runs of 8 positions, tiles stored transposed), so it has to waste far less
    return transposed > 1.3 * normal


def get_num_threads() -> int:
    """Number of cores this process may use: the default thread count."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):
        return max(1, os.cpu_count() or 1)


def _check_threads(threads, what="threads"):
    if threads is None:
        return get_num_threads()
    if isinstance(threads, bool) or not isinstance(threads, (int, np.integer)):
        raise ValueError(f"{what} must be a positive integer or None, got {threads!r}")
    if threads < 1:
        raise ValueError(f"{what} must be a positive integer or None, got {threads}")
    return int(threads)


def load(path, threads: Optional[int] = None, memory_limit: Optional[int] = None,
         isolate: bool = False) -> "Model":
    """Read, validate and plan a model file.

    ``threads``: kernel threads per ``predict`` call (``None``: every core).
    ``memory_limit``: bytes a model may ask for (weights, and activations
    per sample); default 4 GiB.  ``isolate=True`` first reads the file in a
    forked child (``cnnrt.format.check_isolated``), so that damage which
    crashes the HDF5 library is refused instead of crashing this process:
    use it for files from untrusted sources.  Raises ModelFormatError for a
    bad file.
    """
    limit = DEFAULT_MEMORY_LIMIT if memory_limit is None else int(memory_limit)
    if limit <= 0:
        raise ValueError(f"memory_limit must be a positive number of bytes, got {memory_limit}")
    threads = _check_threads(threads)
    if isolate:
        from .format import check_isolated

        check_isolated(path, memory_limit=limit)
    graph = read_model(path, memory_limit=limit)
    return Model(graph, threads=threads, memory_limit=limit)


_FUSABLE_ACT = {"relu": "relu", "sigmoid": "sigmoid", "tanh": "tanh"}


def _activation_of(node) -> Optional[str]:
    """The fused-activation name an element-wise node stands for, if any."""
    if node.op in _FUSABLE_ACT:
        return _FUSABLE_ACT[node.op]
    if node.op == "clip" and node.attrs["min"] == 0.0 and node.attrs["max"] == 6.0:
        return "relu6"
    return None


def _merge(prev: Node, node: Node) -> Optional[Node]:
    """``prev`` with ``node`` folded into it, or None when one kernel cannot run both."""
    if "pool" in prev.attrs:  # nothing folds in after a fused pool
        return None
    act = _activation_of(node)
    if act is not None and prev.op in ("conv2d", "locally_connected2d", "dense", "add"):
        if prev.attrs.get("activation", "none") != "none":
            return None
        return replace(prev, outputs=list(node.outputs), attrs={**prev.attrs, "activation": act})
    if node.op == "batchnorm2d" and prev.op == "conv2d" and prev.attrs["activation"] == "none":
        w = node.weights
        scale = w["gamma"].astype(np.float64) / np.sqrt(w["var"].astype(np.float64)
                                                        + node.attrs["epsilon"])
        shift = w["beta"].astype(np.float64) - w["mean"].astype(np.float64) * scale
        weight = prev.weights["weight"].astype(np.float64) * scale[:, None, None, None]
        bias = prev.weights.get("bias")
        bias = shift if bias is None else bias.astype(np.float64) * scale + shift
        return replace(prev, outputs=list(node.outputs),
                       weights={"weight": weight.astype(np.float32),
                                "bias": bias.astype(np.float32)})
    return None


class _Storage:
    __slots__ = ("size", "last", "offset")

    def __init__(self, size, last):
        self.size = size
        self.last = last
        self.offset = -1


class _Arena:
    """First-fit allocator of per-sample float offsets."""

    def __init__(self):
        self.free: List[Tuple[int, int]] = []  # (offset, size), sorted
        self.end = 0

    def alloc(self, size):
        size = -(-size // ALIGN) * ALIGN
        for i, (off, sz) in enumerate(self.free):
            if sz >= size:
                if sz == size:
                    del self.free[i]
                else:
                    self.free[i] = (off + size, sz - size)
                return off
        off = self.end
        self.end += size
        return off

    def release(self, off, size):
        size = -(-size // ALIGN) * ALIGN
        self.free.append((off, size))
        self.free.sort()
        merged = []
        for o, s in self.free:
            if merged and merged[-1][0] + merged[-1][1] == o:
                merged[-1] = (merged[-1][0], merged[-1][1] + s)
            else:
                merged.append((o, s))
        self.free = merged


class Model:
    """A loaded, validated and planned model.  Thread-safe for ``predict``."""

    def __init__(self, graph: Graph, threads: Optional[int] = None,
                 memory_limit: int = DEFAULT_MEMORY_LIMIT):
        self.graph = graph
        self._threads = _check_threads(threads)
        self._shapes = validate(graph, memory_limit)
        self._lock = threading.Lock()
        self._active = 0  # predict calls in flight (they share the cores)
        self._arenas: List[np.ndarray] = []  # free arenas, smallest first
        self._build()
        self._in_shape = self.input_shape
        self._out_shape = tuple(self.output_shape)

    # ------------------------------------------------------------- properties
    @property
    def input_layout(self) -> str:
        return self.graph.input_layout

    @property
    def input_shape(self) -> Tuple[int, ...]:
        """Shape of one sample as callers pass it (C,H,W or H,W,C)."""
        c, h, w = self.graph.input_shape
        return (h, w, c) if self.input_layout == "NHWC" else (c, h, w)

    @property
    def output_shape(self) -> Tuple[int, ...]:
        return self._shapes[self.graph.outputs[0]]

    @property
    def labels(self) -> Optional[List[str]]:
        return self.graph.labels

    @property
    def preprocess(self) -> Optional[Dict[str, object]]:
        return self.graph.preprocess

    @property
    def threads(self) -> int:
        return self._threads

    @threads.setter
    def threads(self, value):
        self._threads = _check_threads(value)

    # ------------------------------------------------------------- planning
    def _fuse(self):
        """Merge nodes that one kernel can run, keeping the original names.

        An activation node (relu, clip 0..6, sigmoid, tanh) is folded into the
        conv2d, locally_connected2d, dense or add before it, and a batchnorm2d
        into the conv2d before it (weights and bias rescaled in double
        precision), when the tensor between them has no other reader and is
        not the graph output.  A 2x2 stride-2 unpadded max pool is folded
        into a convolution that runs as Winograd with no activation, ReLU
        or ReLU6 (see _pool_fuses); the merged node then writes the pool's
        output and keeps the convolution's in ``attrs["pool"]``.  Returns a
        list of (node, [original names]).
        """
        g = self.graph
        readers: Dict[str, int] = {}
        for node in g.nodes:
            for t in node.inputs:
                readers[t] = readers.get(t, 0) + 1
        producer: Dict[str, int] = {}
        fused: List[Tuple[Node, List[str]]] = []
        for node in g.nodes:
            t = node.inputs[0]
            j = producer.get(t)
            if (j is not None and len(node.inputs) == 1 and readers.get(t) == 1
                    and t != g.outputs[0]):
                prev, names = fused[j]
                if self._pool_fuses(prev, node):
                    merged = replace(prev, outputs=list(node.outputs),
                                     attrs={**prev.attrs, "pool": t})
                else:
                    merged = _merge(prev, node)
                if merged is not None:
                    fused[j] = (merged, names + [node.name])
                    del producer[t]
                    producer[node.outputs[0]] = j
                    continue
            producer[node.outputs[0]] = len(fused)
            fused.append((node, [node.name]))
        return fused

    def _pool_fuses(self, conv, pool) -> bool:
        """Whether a max pool runs inside the Winograd output transform of ``conv``.

        The pool must be 2x2, stride 2, unpadded (so each window lies in one
        4x4 output tile) and the convolution's activation one the AVX-512
        transform applies in its lanes (none, ReLU, ReLU6).  Under
        POOL_FUSION "never" nothing fuses.
        """
        if (POOL_FUSION == "never" or pool.op != "maxpool2d" or conv.op != "conv2d"
                or "pool" in conv.attrs
                or conv.attrs.get("activation", "none") not in _C16_ACTS):
            return False
        a = pool.attrs
        if (tuple(a["kernel"]) != (2, 2) or tuple(a["stride"]) != (2, 2)
                or tuple(a["padding"]) != (0, 0, 0, 0)
                or tuple(a.get("dilation", (1, 1))) != (1, 1)):
            return False
        C = self._shapes[conv.inputs[0]][0]
        K, H2, W2 = self._shapes[conv.outputs[0]]
        return H2 >= 2 and W2 >= 2 and winograd_eligible(conv.attrs, C, K, H2, W2)

    def _size(self, t) -> int:
        """Floats per sample of tensor t (channel-blocked ones padded to 16 channels)."""
        shape = self._shapes[t]
        if t in self._c16:
            return -(-shape[0] // 16) * 16 * prod(shape[1:])
        return prod(shape)

    def _build(self):
        g = self.graph
        fused, self._c16 = self._c16_chains(self._fuse())
        nodes = [node for node, _ in fused]
        # each node's kernel step (offsets are filled in by _layout)
        described = [None if node.op == "flatten" else self._step(node, [], -1)
                     for node in nodes]
        split, boundary = self._tail_start(nodes, described)
        nhwc = g.input_layout == "NHWC"
        head = self._layout(fused[:split], described[:split], g.inputs[0], boundary,
                            ext_in=not nhwc, ext_out=split == len(nodes))
        steps, self._step_nodes = head["steps"], head["names"]
        thread = head["thread"]
        out_off, tail = head["out_off"], None
        if split < len(nodes):
            t = self._layout(fused[split:], described[split:], boundary, g.outputs[0],
                             ext_in=False, ext_out=True)
            steps = steps + t["steps"]
            self._step_nodes = self._step_nodes + t["names"]
            thread = max(thread, t["thread"])
            out_off = t["out_off"]
            tail = (len(head["steps"]), head["out_off"], self._size(boundary),
                    t["sample"], t["scratch"], t["in_off"], TAIL_CHUNK_FACTOR)
        # the nodes that run on whole batches (see _tail_start)
        self._tail_nodes = [name for _, names in fused[split:] for name in names]
        self._plan_ops = [step["op"] for step in steps]  # kernels chosen, for tests
        self._plan_variants = [step.get("variant") for step in steps]
        self._plan_panels = [step.get("nr") for step in steps]  # rows: channels per panel
        self._plan = _engine.Plan(
            steps,
            head["sample"],
            head["scratch"],
            head["in_off"],
            tuple(g.input_shape),
            nhwc,
            out_off,
            prod(self._shapes[g.outputs[0]]),
            thread,
            tail,
        )

    def _c16_kind(self, node) -> Optional[str]:
        """"dw" or "pw" for a convolution the channel-blocked kernels run."""
        if node.op != "conv2d" or node.attrs.get("activation", "none") not in _C16_ACTS:
            return None
        a = node.attrs
        C, K = self._shapes[node.inputs[0]][0], self._shapes[node.outputs[0]][0]
        if a["groups"] == C == K:
            return "dw"
        if (a["groups"] == 1 and tuple(a["kernel"]) == (1, 1) and tuple(a["stride"]) == (1, 1)
                and tuple(a["padding"]) == (0, 0, 0, 0)):
            return "pw"
        return None

    def _rows_variant(self, node) -> bool:
        """Whether a one-group convolution runs with vectors along output channels."""
        a = node.attrs
        if "pool" in a:  # runs as Winograd
            return False
        C, H, W = self._shapes[node.inputs[0]]
        K, H2, W2 = self._shapes[node.outputs[0]]
        return not winograd_eligible(a, C, K, H2, W2) and rows_wins(a, C, K, H2, W2)

    def _c16_chains(self, fused):
        """Run chains of depthwise and pointwise convolutions channel-blocked.

        The members are those convolutions (see _c16_kind; under "auto" only
        those with at least 16 input channels) and the element-wise nodes all
        of whose inputs come from members; under "auto", connected groups of
        members without a depthwise layer or with fewer than two
        convolutions are left out.  A convolution on the
        row kernels whose output only members or max pools read stores that
        output channel-blocked itself, and the max pools (and element-wise
        nodes) reading only channel-blocked tensors then join the members.
        A member reads and writes the tensor ``t + "#c16"``; a ``to_c16``
        step makes it from t before the first member reading a tensor that
        nothing channel-blocked produced, and a ``from_c16`` step writes t
        back as planes right after a member whose output is read elsewhere
        or is the graph's output.  Returns the rewritten (node, names) list
        and the set of channel-blocked tensors.
        """
        if C16 == "never" or (C16 == "auto" and get_isa() != "avx512"):
            return fused, set()
        g = self.graph
        nodes = [node for node, _ in fused]
        kinds = [self._c16_kind(node) for node in nodes]
        if C16 == "auto":  # blocks of 16 lanes for fewer channels mostly carry padding
            kinds = [k if k is None or self._shapes[node.inputs[0]][0] >= 16 else None
                     for k, node in zip(kinds, nodes)]
        keep = [k is not None for k in kinds]
        while True:
            member = list(keep)
            made = set()
            for i, node in enumerate(nodes):
                if kinds[i] is None:
                    member[i] = (node.op in _C16_ELEMENTWISE
                                 and all(t in made for t in node.inputs))
                if member[i]:
                    made.add(node.outputs[0])
            if C16 != "auto":
                break
            # connected groups of members, joined through the tensors between them
            group = list(range(len(nodes)))

            def find(i):
                while group[i] != i:
                    group[i] = group[group[i]]
                    i = group[i]
                return i
            producer = {node.outputs[0]: i for i, node in enumerate(nodes)}
            for i, node in enumerate(nodes):
                if member[i]:
                    for t in node.inputs:
                        j = producer.get(t)
                        if j is not None and member[j]:
                            group[find(i)] = find(j)
            convs: Dict[int, List[str]] = {}
            for i in range(len(nodes)):
                if member[i] and kinds[i] is not None:
                    convs.setdefault(find(i), []).append(kinds[i])
            dropped = False
            for i in range(len(nodes)):
                if keep[i]:
                    ks = convs[find(i)]
                    if "dw" not in ks or len(ks) < 2:
                        keep[i] = False
                        dropped = True
            if not dropped:
                break
        readers: Dict[str, List[int]] = {}
        for i, node in enumerate(nodes):
            for t in node.inputs:
                readers.setdefault(t, []).append(i)
        # a convolution with vectors along output channels whose output only
        # members or max pools read writes it channel-blocked itself (no
        # to_c16 step); those pools then run channel-blocked too
        writes = [False] * len(nodes)
        for i, node in enumerate(nodes):
            t = node.outputs[0]
            if (not member[i] and node.op == "conv2d" and node.attrs["groups"] == 1
                    and node.attrs.get("activation", "none") in _C16_ACTS
                    and t != g.outputs[0] and readers.get(t)
                    and all(member[j] or nodes[j].op == "maxpool2d" for j in readers[t])
                    and self._rows_variant(node)):
                writes[i] = True
                made.add(t)
        for i, node in enumerate(nodes):
            if (not member[i] and node.op in _C16_ELEMENTWISE + ("maxpool2d",)
                    and all(t in made for t in node.inputs)):
                member[i] = True
                made.add(node.outputs[0])
        if not any(member):
            return fused, set()
        c16 = set()
        out = []
        for i, (node, names) in enumerate(fused):
            if writes[i]:
                t = node.outputs[0]
                out.append((replace(node, outputs=[t + "#c16"]), names))
                self._shapes[t + "#c16"] = self._shapes[t]
                c16.add(t + "#c16")
                continue
            if not member[i]:
                out.append((node, names))
                continue
            for t in node.inputs:
                if t not in made and t + "#c16" not in c16:
                    name = f"[to c16] {t}"
                    out.append((Node("to_c16", name, [t], [t + "#c16"]), [name]))
                    self._shapes[t + "#c16"] = self._shapes[t]
                    c16.add(t + "#c16")
            t = node.outputs[0]
            out.append((replace(node, inputs=[u + "#c16" for u in node.inputs],
                                outputs=[t + "#c16"]), names))
            self._shapes[t + "#c16"] = self._shapes[t]
            c16.add(t + "#c16")
            if t == g.outputs[0] or any(not member[j] for j in readers.get(t, [])):
                name = f"[from c16] {t}"
                out.append((Node("from_c16", name, [t + "#c16"], [t]), [name]))
        return out, c16

    def _tail_start(self, nodes, described):
        """Where the batched tail of the graph starts: (node index, its input tensor).

        A batch runs chunk by chunk, a few samples per thread, so that each
        layer's output is still in cache for the next one; every chunk then
        reads every layer's weights again.  Near the end of most CNNs the
        weights outweigh the activations (a classifier's dense layer reads
        megabytes of weights for a few kilobytes of features), and those
        layers run once on the whole batch (in chunks of up to
        TAIL_CHUNK_FACTOR times the chunk size) instead.  The tail starts
        where exactly one tensor crosses into it and where the weights it
        saves re-reading most exceed the activations (and scratch) it keeps
        out of cache; (len(nodes), output) when no such place gains.
        """
        g = self.graph
        shapes = self._shapes
        n = len(nodes)
        producer = {g.inputs[0]: -1}
        last_read: Dict[str, int] = {}
        for i, node in enumerate(nodes):
            producer[node.outputs[0]] = i
            for t in node.inputs:
                last_read[t] = i
        last_read[g.outputs[0]] = n  # read by the caller, after the last node
        # tensor t crosses into a tail starting at s when producer < s <= last read
        crossing = [0] * (n + 2)
        for t, last in last_read.items():
            if producer[t] + 1 <= last:
                crossing[producer[t] + 1] += 1
                crossing[last + 1] -= 1
        for s in range(1, n + 1):
            crossing[s] += crossing[s - 1]
        gain = [0] * (n + 1)  # gain[s]: of the nodes from s on
        steps_before = [0] * (n + 1)
        for i, (node, desc) in enumerate(zip(nodes, described)):
            steps_before[i + 1] = steps_before[i] + (desc is not None)
        for i in range(n - 1, -1, -1):
            gain[i] = gain[i + 1]
            if described[i] is not None:
                d, need = described[i][0], described[i][1]
                weights = sum(d[k].nbytes for k in ("w", "w2") if d.get(k) is not None)
                acts = (sum(self._size(t) for t in nodes[i].inputs)
                        + self._size(nodes[i].outputs[0]))
                gain[i] += weights - 4 * (acts + need)
        best, best_gain = n, TAIL_MIN_GAIN
        for s in range(1, n):
            # one tensor crosses, and both parts have steps
            if (crossing[s] == 1 and steps_before[s] > 0 and steps_before[n] > steps_before[s]
                    and gain[s] > best_gain):
                best, best_gain = s, gain[s]
        if best == n:
            return n, g.outputs[0]
        return best, next(t for t, last in last_read.items() if producer[t] < best <= last)

    def _layout(self, fused, described, inp, out, ext_in=False, ext_out=False):
        """Memory plan of a run of nodes reading tensor ``inp`` and producing ``out``.

        Returns their steps (offsets filled in), the node names of each step,
        the arena floats per sample, the work space per sample and per
        thread, and the offsets of ``inp`` and ``out``.  With ``ext_in`` the
        steps read ``inp`` where the caller keeps it, and with ``ext_out`` the
        step producing ``out`` writes it into the caller's array (Step.io),
        wherever every reader of those tensors can (see _io_marks).
        """
        shapes = self._shapes
        nodes = [node for node, _ in fused]
        n_nodes = len(nodes)
        last_use: Dict[str, int] = {inp: -1}
        for i, node in enumerate(nodes):
            last_use.setdefault(node.outputs[0], i)
            for t in node.inputs:
                last_use[t] = i
        last_use[out] = n_nodes

        storage: Dict[str, _Storage] = {}
        arena = _Arena()
        storage[inp] = _Storage(self._size(inp), last_use[inp])
        storage[inp].offset = in_off = arena.alloc(storage[inp].size)

        steps = []
        names = []  # for each step, the names of the nodes it runs
        scratch = 0
        thread_scratch = 0
        for i, node in enumerate(nodes):
            t_out = node.outputs[0]
            src = storage[node.inputs[0]]
            first_dies = src.last == i and node.inputs.count(node.inputs[0]) == 1
            if node.op == "flatten" or (node.op in _IN_PLACE and first_dies):
                # write over the input: same storage, lifetime extended
                src.last = max(src.last, last_use[t_out])
                storage[t_out] = src
            else:
                st = _Storage(self._size(t_out), last_use[t_out])
                st.offset = arena.alloc(st.size)
                storage[t_out] = st
            if node.op != "flatten":
                step, need, thread_need = described[i]
                step = dict(step, in_off=[storage[t].offset for t in node.inputs],
                            out_off=storage[t_out].offset)
                steps.append(step)
                names.append(fused[i][1])
                scratch = max(scratch, need)
                thread_scratch = max(thread_scratch, thread_need)
            # release storages whose last reader was this node
            seen = set()
            for t in node.inputs + [t_out]:
                st = storage[t]
                if id(st) in seen:
                    continue
                seen.add(id(st))
                if st.last <= i and st.offset >= 0:
                    arena.release(st.offset, st.size)
                    st.offset = -2  # released; offsets already recorded in steps
        scratch = -(-scratch // ALIGN) * ALIGN  # what follows stays on cache lines
        for step, io in zip(steps, self._io_marks(nodes, inp, out, ext_in, ext_out)):
            if io:
                step["io"] = io
        return {"steps": steps, "names": names, "sample": arena.end, "scratch": scratch,
                "thread": thread_scratch, "in_off": in_off, "out_off": storage[out].offset}

    @staticmethod
    def _io_marks(nodes, inp, out, ext_in, ext_out):
        """Step.io of each step (flatten nodes have none) of ``nodes``.

        A flatten is a view: the names of ``inp`` are it and the flattens of
        it, the names of ``out`` it and what it is a flatten of.  A step reads
        the input in place if its first input is a name of ``inp``; that is
        done only if no step reads a name of ``inp`` any other way (as a
        further input, or through the arena as sums and concatenations do).
        A step writes the output into the caller's array if it produces a
        name of ``out``, and only if no step reads a name of ``out``.  Where
        the output is the input, the input is copied and the output too.
        """
        in_names, out_names = {inp}, {out}
        for node in nodes:
            if node.op == "flatten" and node.inputs[0] in in_names:
                in_names.add(node.outputs[0])
        for node in reversed(nodes):
            if node.op == "flatten" and node.outputs[0] in out_names:
                out_names.add(node.inputs[0])
        steps = [node for node in nodes if node.op != "flatten"]
        if in_names & out_names:
            ext_in = ext_out = False
        if ext_in:
            ext_in = not any(t in in_names for node in steps for t in node.inputs[1:]) and \
                not any(node.op in ("add", "concat") and node.inputs[0] in in_names
                        for node in steps)
        if ext_out:
            ext_out = not any(t in out_names for node in steps for t in node.inputs)
        return [(1 if ext_in and node.inputs[0] in in_names else 0)
                | (2 if ext_out and node.outputs[0] in out_names else 0) for node in steps]

    def _step(self, node, in_offs, out_off):
        """Describe one node as a kernel step; returns (step dict, scratch floats)."""
        shapes = self._shapes
        a = node.attrs
        w = node.weights
        in_shape = shapes[node.inputs[0]]
        # a convolution with a fused pool: its own output shape (the step writes the pool's)
        out_shape = shapes[a["pool"] if "pool" in a else node.outputs[0]]
        d = {"op": node.op, "in_off": in_offs, "out_off": out_off,
             "in_size": self._size(node.inputs[0]), "out_size": self._size(node.outputs[0])}
        if node.op in ("to_c16", "from_c16"):
            d["C"], d["H"], d["W"] = in_shape
            d["work"] = prod(in_shape)
            return d, 0, 0
        # arithmetic per sample, for the choice of one thread or many
        macs = OPS[node.op].macs(a, [shapes[t] for t in node.inputs], out_shape)
        window = prod(a["kernel"]) if "kernel" in a else 1
        d["work"] = max(int(macs), prod(out_shape) * window * len(node.inputs))
        need = 0
        thread_need = 0
        if node.op in ("conv2d", "locally_connected2d", "maxpool2d", "avgpool2d", "l2pool2d"):
            C, H, W = in_shape
            K, H2, W2 = out_shape
            d.update(C=C, H=H, W=W, K=K, H2=H2, W2=W2)
            d["kh"], d["kw"] = a["kernel"]
            d["sh"], d["sw"] = a["stride"]
            d["pt"], d["pl"], d["pb"], d["pr"] = a["padding"]
            d["dh"], d["dw"] = a.get("dilation", (1, 1))
            d["groups"] = a.get("groups", 1)
            if node.op == "avgpool2d":
                d["flag"] = a["count_include_pad"]
        if node.op == "maxpool2d" and node.inputs[0] in self._c16:
            d["op"] = "maxpool_c16"
        if node.op == "conv2d":
            d["activation"] = a["activation"]
            d["w"] = w["weight"]
            d["b"] = w.get("bias")
            g = a["groups"]
            if node.inputs[0] in self._c16:
                self._c16_step(d, node)
                if g == 1:
                    thread_need = ROWS_TILE_FLOATS
            elif node.outputs[0] in self._c16:
                # vectors along output channels, tiles stored channel-blocked
                d["flag"] = 5
                d["variant"] = "rows"
                d["nr"] = rows_panel(K)
                d["w"] = pack_conv_weights_t(w["weight"], 1, d["nr"])
                d["b2"] = panel_biases(w.get("bias"), K, d["nr"])
                d.update(rows_input(a, C, H, W))
                need = d["gimage"]
                thread_need = ROWS_TILE_FLOATS
            elif C == g:
                d["op"] = "depthwise2d"
                if a["stride"] in ((1, 1), (2, 2)):
                    thread_need = _engine.dwconv_plane_work(
                        a["stride"][0], H, W, d["kw"], d["dw"], d["pt"], d["pl"], d["pb"],
                        d["pr"], H2)
                if K == C and dw16_wins(a, W2):
                    # 16 channels at a time (used where the ISA has that kernel)
                    d["w2"], d["b2"] = depthwise_weights16(w["weight"], w.get("bias"))
                    thread_need = max(thread_need, _engine.dw16_work(
                        W, d["kh"], d["sh"], d["dh"], d["pl"], d["pr"], H2, W2))
            elif winograd_eligible(a, C, K, H2, W2):
                d["op"] = "winograd3x3"
                d["w"] = pack_winograd_weights(w["weight"])
                th, tw = -(-H2 // 4), -(-W2 // 4)
                d["th"], d["tw"] = th, tw
                if "pool" in a:  # writes the 2x2 stride-2 max pool of its output
                    d["flag"] = 1
                # per sample: padded input, V and M (tiles rounded up per batch)
                need = C * (4 * th + 2) * (4 * tw + 2) + 36 * (th * tw + 7) * (C + K)
            elif g == 1 and rows_wins(a, C, K, H2, W2):
                d["flag"] = 3
                d["variant"] = "rows"
                d["nr"] = rows_panel(K)
                d["w"] = pack_conv_weights_t(w["weight"], 1, d["nr"])
                d.update(rows_input(a, C, H, W))
                need = d["gimage"]
                thread_need = ROWS_TILE_FLOATS
            elif conv_transposed(H2 * W2, K // g):
                d["flag"] = 1
                d["variant"] = "transposed"
                d["w"] = pack_conv_weights_t(w["weight"], g)
                # per sample: every group's positions packed as A panels
                need = g * -(-(H2 * W2) // 8) * 8 * (C // g) * d["kh"] * d["kw"]
            elif (grid := direct_grid(a, C, H, W, H2, W2, g)) is not None:
                d["flag"] = 2
                d["variant"] = "direct"
                d["w"] = pack_conv_weights(w["weight"], g)
                d.update(grid)
                need = d["gimage"] if d["gprep"] else 0
                # weights larger than DIRECT_SHARED_WEIGHTS bytes: each task
                # applies every weight block it reads to several tiles
                d["outer"] = 4 if w["weight"].nbytes > DIRECT_SHARED_WEIGHTS else 1
                thread_need = (d["outer"] * -(-(K // g) // _engine.GEMM_MR)
                               * _engine.GEMM_MR * _engine.GEMM_NR)
            else:
                d["variant"] = "packed"
                d["w"] = pack_conv_weights(w["weight"], g)
                if a["stride"] != (1, 1):
                    # the input split into its stride phases (see phase_plane)
                    sh, sw = a["stride"]
                    d["th"] = -(-(H + d["pt"] + d["pb"]) // sh)
                    d["tw"] = -(-(W + d["pl"] + d["pr"]) // sw)
                    need = C * sh * sw * d["th"] * d["tw"]
                # few output positions: room to pack every column panel once,
                # shared by the threads (see conv2d_shared)
                P = H2 * W2
                spack = g * (C // g) * d["kh"] * d["kw"] * -(-P // _engine.GEMM_NR) * _engine.GEMM_NR
                if P <= SHARED_PACK_POSITIONS and spack <= SHARED_PACK_FLOATS:
                    d["spack"] = spack
                    need += spack
        elif node.op == "locally_connected2d":
            d["activation"] = a["activation"]
            d["w"] = w["weight"]
            d["b"] = w.get("bias")
        elif node.op == "dense":
            d["activation"] = a["activation"]
            d["w"] = w["weight"]
            d["b"] = w.get("bias")
        elif node.op in ("globalavgpool", "globalmaxpool"):
            d["C"], d["H"], d["W"] = in_shape
        elif node.op == "add":
            d["activation"] = a.get("activation", "none")
        elif node.op == "leaky_relu":
            d["f0"] = a["alpha"]
        elif node.op == "clip":
            d["f0"], d["f1"] = a["min"], a["max"]
        elif node.op == "batchnorm2d":
            gamma = w["gamma"].astype(np.float64)
            var = w["var"].astype(np.float64)
            scale = gamma / np.sqrt(var + a["epsilon"])
            shift = w["beta"].astype(np.float64) - w["mean"].astype(np.float64) * scale
            d["C"] = in_shape[0]
            d["H"] = prod(in_shape[1:])
            d["W"] = 1
            d["w"] = scale.astype(np.float32)
            d["b"] = shift.astype(np.float32)
        elif node.op in ("softmax", "concat"):
            ax = softmax_axis(a["axis"], len(out_shape))
            d["outer"] = prod(out_shape[:ax])
            d["axis"] = out_shape[ax]
            d["inner"] = prod(out_shape[ax + 1:])
            if node.op == "concat":
                d["in_len"] = [shapes[t][ax] for t in node.inputs]
        if "pool" in a and d["op"] != "winograd3x3":
            raise AssertionError(f"{node.name}: a fused pool needs the Winograd kernel")
        return d, need, thread_need

    # ------------------------------------------------------------- running
    def _c16_step(self, d, node):
        """The step fields of a channel-blocked depthwise or pointwise convolution."""
        w = node.weights
        K = d["K"]
        if self._c16_kind(node) == "dw":
            d["op"] = "depthwise_c16"
            d["w2"], d["b2"] = depthwise_weights16(w["weight"], w.get("bias"))
            return
        C, HW = d["C"], d["H"] * d["W"]
        d["flag"] = 4
        d["variant"] = "c16"
        d["run"] = pw_run_length(HW)
        widths = pw_panels(K)
        if 48 in widths:
            d["nr"] = 48
        d["w"], d["b2"] = pack_pointwise_panels(w["weight"], w.get("bias"), widths)
        # tap q (input channel q) of a position: block q // 16, lane q % 16
        q = np.arange(C)
        d["toff"] = ((q // 16) * HW * 16 + q % 16).astype(np.intp)

    def _prepare(self, x) -> np.ndarray:
        """The input as a C-contiguous, aligned float32 batch, or ValueError.

        Whether every value is finite is checked by the plan before it runs
        (see _nonfinite).
        """
        if (type(x) is np.ndarray and x.dtype == np.float32 and x.flags.c_contiguous
                and x.flags.aligned and x.shape[1:] == self._in_shape
                and x.ndim == len(self._in_shape) + 1 and x.shape[0] > 0):
            return x  # the common case, already valid
        expected = ("N",) + self.input_shape
        want = "(" + ", ".join(map(str, expected)) + ")"
        if not isinstance(x, np.ndarray):
            try:
                x = np.asarray(x)
            except Exception as exc:
                raise ValueError(f"input must be a numeric array of shape {want}: {exc}") from None
        if x.dtype.kind not in "iuf":
            raise ValueError(
                f"input must be a real numeric array of shape {want} ({self.input_layout}), "
                f"got dtype {x.dtype}"
            )
        if x.ndim == len(self.input_shape) and tuple(x.shape) == self.input_shape:
            raise ValueError(
                f"input of shape {tuple(x.shape)} has no batch axis: expected {want} "
                f"({self.input_layout}); pass x[None] for one sample"
            )
        if x.ndim != len(expected) or tuple(x.shape[1:]) != self.input_shape:
            raise ValueError(
                f"input has shape {tuple(x.shape)}, expected {want} ({self.input_layout})"
            )
        if x.shape[0] == 0:
            raise ValueError(f"input batch is empty: expected {want} with N >= 1")
        with np.errstate(over="ignore", invalid="ignore"):  # out of range becomes inf
            # the plan reads the input where it lies: whole floats, in order
            x = np.require(x, dtype=np.float32, requirements=["C_CONTIGUOUS", "ALIGNED"])
        return x

    @staticmethod
    def _nonfinite(x):
        return ValueError(f"input of shape {tuple(x.shape)} has NaN or infinite values")

    def _arena_locked(self, size):
        """A free arena of at least ``size`` floats, or None; the lock is held."""
        for i, arr in enumerate(self._arenas):
            if arr.shape[0] >= size:
                return self._arenas.pop(i)
        return None

    def _take_arena(self, size):
        with self._lock:
            arena = self._arena_locked(size)
        return np.empty(max(size, 1), dtype=np.float32) if arena is None else arena

    def _give_arena_locked(self, arr):
        """Keep ``arr`` for later calls (at most 8 arenas); the lock is held."""
        arenas = self._arenas
        if len(arenas) < 8:
            i = 0
            while i < len(arenas) and arenas[i].shape[0] < arr.shape[0]:
                i += 1
            arenas.insert(i, arr)

    def _give_arena(self, arr):
        with self._lock:
            self._give_arena_locked(arr)

    def predict(self, x, threads: Optional[int] = None) -> np.ndarray:
        """Run the model on a batch ``x`` of shape ``(N, *input_shape)``.

        Returns a float32 array of shape ``(N, *output_shape)``.  ``threads``
        overrides the model's thread count for this call.
        """
        nt = self._threads if threads is None else _check_threads(threads)
        x = self._prepare(x)
        n = x.shape[0]
        out = np.empty((n,) + self._out_shape, dtype=np.float32)
        plan = self._plan
        with self._lock:
            self._active += 1
            # calls from several Python threads at once share the cores
            # instead of each starting a full team (results do not depend on
            # the thread count)
            if threads is None and self._active > 1:
                nt = max(1, nt // self._active)
            size = plan.arena_size(n, nt)
            arena = self._arena_locked(size)
        try:
            if arena is None:
                arena = np.empty(max(size, 1), dtype=np.float32)
            bad = plan.run(x, arena, out, n, nt)
        finally:
            with self._lock:
                self._active -= 1
                if arena is not None:
                    self._give_arena_locked(arena)
        if bad:
            raise self._nonfinite(x)
        return out

    def profile(self, x, repeats: int = 10, threads: Optional[int] = None):
        """Time every node on batch ``x``; returns a list of dicts, slowest first.

        Each row has ``name`` (the file's node names; nodes fused into one
        kernel are joined with ``+``), ``op``, ``ms`` (mean wall time per call)
        and ``share`` of the total.  Layout reorders of channel-blocked chains
        are rows of their own, named ``[to c16] <tensor>`` and
        ``[from c16] <tensor>``, op ``reorder``.
        """
        if isinstance(repeats, bool) or not isinstance(repeats, (int, np.integer)) or repeats < 1:
            raise ValueError(f"repeats must be a positive integer, got {repeats!r}")
        nt = self._threads if threads is None else _check_threads(threads)
        x = self._prepare(x)
        n = x.shape[0]
        out = np.empty((n,) + self._out_shape, dtype=np.float32)
        seconds = np.zeros(len(self._step_nodes), dtype=np.float64)
        arena = self._take_arena(self._plan.arena_size(n, nt))
        try:
            if self._plan.run(x, arena, out, n, nt):  # warm-up
                raise self._nonfinite(x)
            for _ in range(int(repeats)):
                self._plan.run_timed(x, arena, out, n, nt, seconds)
        finally:
            self._give_arena(arena)
        ops = {node.name: node.op for node in self.graph.nodes}
        for names in self._step_nodes:  # the plan's own steps (layout reorders)
            for nm in names:
                ops.setdefault(nm, "reorder")
        total = float(seconds.sum()) or 1.0
        rows = [{"name": "+".join(names), "op": "+".join(ops[nm] for nm in names),
                 "ms": 1e3 * sec / repeats, "share": sec / total}
                for names, sec in zip(self._step_nodes, seconds)]
        rows.sort(key=lambda r: -r["ms"])
        return rows

    def predict_image(self, image) -> np.ndarray:
        """Scores for one image: a path, bytes, a file object or a PIL image.

        The image is decoded and preprocessed as the file's /meta/preprocess
        says (see ``cnnrt.image.load_image``).
        """
        from .image import load_image

        x = load_image(image, self.graph.input_shape, self.input_layout, self.preprocess)
        return self.predict(x[None])[0]

    # ------------------------------------------------------------- reporting
    def layers(self):
        """One dict per node: name, op, output shape, parameters, multiply-adds."""
        rows = []
        for node in self.graph.nodes:
            ins = [self._shapes[t] for t in node.inputs]
            out = self._shapes[node.outputs[0]]
            params = sum(int(v.size) for k, v in node.weights.items())
            macs = OPS[node.op].macs(node.attrs, ins, out)
            rows.append({"name": node.name, "op": node.op, "output_shape": out,
                         "params": params, "macs": int(macs)})
        return rows

    def summary(self) -> str:
        """A printable table of the nodes with totals."""
        rows = self.layers()
        cells = [("name", "op", "output shape", "params", "mult-adds")]
        for r in rows:
            cells.append((r["name"], r["op"], "x".join(map(str, r["output_shape"])),
                          f"{r['params']:,}", f"{r['macs']:,}"))
        total_p = sum(r["params"] for r in rows)
        total_m = sum(r["macs"] for r in rows)
        cells.append(("total", f"{len(rows)} nodes", "", f"{total_p:,}", f"{total_m:,}"))
        widths = [max(len(c[i]) for c in cells) for i in range(5)]
        lines = []
        for j, c in enumerate(cells):
            line = "  ".join(
                c[i].ljust(widths[i]) if i < 3 else c[i].rjust(widths[i]) for i in range(5)
            )
            lines.append(line.rstrip())
            if j == 0 or j == len(cells) - 2:
                lines.append("  ".join("-" * w for w in widths))
        head = (f"input {self.input_layout} {list(self.input_shape)} -> "
                f"output {list(self.output_shape)}")
        return head + "\n" + "\n".join(lines)

    def __repr__(self):
        return (f"<cnnrt.Model {len(self.graph.nodes)} nodes, input {self.input_layout} "
                f"{self.input_shape}, output {self.output_shape}, threads={self._threads}>")
