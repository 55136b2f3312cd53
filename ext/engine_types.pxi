# Types of the cnnrt execution engine (module cnnrt._engine), included by
# ext/_engine.pyx and by any kernel module that builds or reads plan steps.
#
# A model is executed as an array of ``Step`` structs, one per planned node.
# Every tensor lives in one float32 arena: a tensor with ``size`` elements per
# sample at per-sample offset ``off`` occupies ``arena[off*N : off*N + size*N]``
# for a batch of N, laid out [N, size].  Kernels read inputs first, then write
# preallocated outputs, and take the thread count last.  Kernels never
# allocate: scratch space is part of the arena.

# ---------------------------------------------------------------- op codes
cdef enum OpCode:
    OP_CONV2D = 1
    OP_DEPTHWISE2D
    OP_LOCALLY_CONNECTED2D
    OP_DENSE
    OP_MAXPOOL2D
    OP_AVGPOOL2D
    OP_L2POOL2D
    OP_GLOBALAVGPOOL
    OP_GLOBALMAXPOOL
    OP_RELU
    OP_SIGMOID
    OP_TANH
    OP_LEAKY_RELU
    OP_CLIP
    OP_BATCHNORM
    OP_SOFTMAX
    OP_ADD
    OP_CONCAT
    OP_WINOGRAD3X3
    OP_TO_C16
    OP_FROM_C16
    OP_DEPTHWISE_C16
    OP_MAXPOOL_C16

# ------------------------------------------------------- fused activations
cdef enum Activation:
    ACT_NONE = 0
    ACT_RELU
    ACT_RELU6
    ACT_SIGMOID
    ACT_TANH

# ------------------------------------------------------------- plan steps
ctypedef struct Step:
    int op
    int act
    int n_in
    const Py_ssize_t* in_off      # per-sample offsets of the inputs
    const Py_ssize_t* in_len      # concat: axis length of each input
    Py_ssize_t out_off
    Py_ssize_t in_size            # elements per sample of input 0
    Py_ssize_t out_size           # elements per sample of the output
    Py_ssize_t C, H, W            # input image
    Py_ssize_t K, H2, W2          # output image
    Py_ssize_t kh, kw, sh, sw, dh, dw
    Py_ssize_t pt, pl, pb, pr
    Py_ssize_t groups
    Py_ssize_t outer, axis, inner # softmax / concat view [outer, axis, inner];
                                  # conv2d read in place: grid tiles per task
    Py_ssize_t th, tw             # winograd: output tiles down and across
    Py_ssize_t tstride            # floats of private work space per thread
    Py_ssize_t work               # arithmetic per sample (about one unit per multiply-add)
    Py_ssize_t spack              # conv2d: floats per sample of shared packing (0: none)
    # conv2d read in place (flag 2): the input as a grid of planes gw floats
    # wide, gplane floats apart, gimage floats per image; gprep 0: the input
    # itself, 1: a zero-padded copy, 2: its stride phases; toff[q]: offset of
    # tap q's first element from the output position's grid index
    Py_ssize_t gw, gplane, gimage, gprep
    Py_ssize_t run                # c16 pointwise: positions per run (6 to 8)
    Py_ssize_t nr                 # convolutions with vectors along output channels:
                                  # channels per weight panel (48, else 32)
    const Py_ssize_t* toff
    int flag                      # avgpool: count_include_pad
    int io                        # 1: input 0 is the model's input, read where the
                                  # caller keeps it; 2: the output is the model's
                                  # output, written straight into the caller's array
    float f0, f1                  # leaky_relu alpha; clip min, max
    const float* w                # weights (or batchnorm scale)
    const float* b                # bias (or batchnorm shift); NULL if none
    const float* w2               # depthwise: weights as [K/16][kh*kw][16] (NULL: none)
    const float* b2               # depthwise: biases as [K/16][16], zeros if none;
                                  # c16 pointwise: biases of every 32-wide panel
