"""Which TensorFlow ops can carry a channel permutation, and how.

A channel permutation found for a pruned GEMM op (its *C*-permutation) must
reach the ops that produce its input, which then *K*-permute their output
channels. Between the two, every op is looked up here:

- `ALLOW_OPS`: GEMM ops that tf_asp prunes and permutes (C on their input
  channels, K on their output channels), when one operand is a Keras kernel
  variable (read directly, or reshaped and transposed as `EinsumDense` and
  `Conv1D` do).
- `INFER_OPS`: ops that carry the permutation and must permute a per-channel
  variable of their own (a bias, BatchNormalization's four vectors, a
  depthwise kernel, LayerNormalization's gamma and beta, a positional
  embedding, the table an `Embedding` gathers from). Keras 3 decomposes
  BatchNormalization and LayerNormalization into elementwise ops, so an
  elementwise op is an *infer* op when an operand is computed only from
  variables, and a *clear* op otherwise.
- `CLEAR_OPS`: ops that pass the permutation through unchanged, wherever they
  move the channel axes (`graph/axes.py`): a reshape may split the channels
  into heads and a transpose move the heads, an attention product carries
  each head's channels within that head, and a channel-axis concatenation
  places its inputs' channels side by side as segments.
- `SKIP_OPS`: bookkeeping ops, hidden in plots.

Any other op is unsupported: it stops a permutation, and the channels it
touches are left as they are. The lists are plain data; to support a new op,
add it to the behaviour set below that describes it, with a test (see
`tests/test_graph_oplists.py`: every entry must be exercised there).

>>> "Relu" in CLEAR_OPS, "BiasAdd" in INFER_OPS, "Conv2D" in ALLOW_OPS
(True, True, True)
"""

# Elementwise on one tensor: output channel c depends on input channel c only.
ELEMENTWISE_UNARY = frozenset(
    {
        "Identity",  # tf.function outputs, Keras' `Activation("linear")`
        "Cast",  # mixed precision, dtype changes
        "StopGradient",  # LayerNormalization's moments
        "Relu",  # ReLU
        "Relu6",  # MobileNetV2's ReLU(6.0)
        "Elu",  # activation="elu"
        "Selu",  # activation="selu"
        "Sigmoid",  # activation="sigmoid", swish = x * sigmoid(x)
        "Tanh",  # activation="tanh"
        "Softplus",  # activation="softplus"
        "Erfc",  # activation="gelu" (exact)
        "Neg",  # gelu, LayerNormalization
        "Abs",  # ops.abs
        "Square",  # ops.square
        "Sqrt",  # ops.sqrt
        "Rsqrt",  # BatchNormalization's 1 / sqrt(var + eps)
    }
)

# Elementwise on several tensors, with broadcasting: an operand with the
# channels carries the permutation, one of channel size 1 (or a scalar) is
# invariant. An operand computed only from per-channel variables makes the op
# an *infer* op: those variables are permuted with the channels.
ELEMENTWISE_BINARY = frozenset(
    {
        "AddV2",  # residual connections, biases, BatchNormalization
        "Sub",  # BatchNormalization's beta - mean * scale
        "Mul",  # BatchNormalization's scale, swish, squeeze-and-excitation
        "RealDiv",  # division by a scalar
        "Maximum",  # ops.maximum
        "Minimum",  # ops.minimum
        "SquaredDifference",  # LayerNormalization's variance
        "AddN",  # tf.add_n of several branches
    }
)

# Ops that forward each input to the same output: Keras 3's swish (silu)
# returns its result through IdentityN for its custom gradient.
IDENTITY_N = frozenset({"IdentityN"})

# Bias and normalization ops whose variables are per-channel operands.
PER_CHANNEL = frozenset(
    {
        "BiasAdd",  # Dense and Conv2D bias (NHWC)
        "FusedBatchNormV3",  # BatchNormalization of tf_keras / tf.nn (inference)
    }
)

# Depthwise convolution with channel multiplier 1: each channel is filtered by
# its own kernel slice `kernel[:, :, c, 0]`, which moves with the channel.
DEPTHWISE = frozenset({"DepthwiseConv2dNative"})

# Keras 3 compiles a grouped Conv2D into a function call. With one group per
# channel (ConvNeXt's depthwise convolutions) it is a depthwise convolution
# whose kernel `(H, W, 1, C)` moves its last axis with the channels; any other
# call is unsupported.
GROUPED_CONV_CALLS = frozenset({"StatefulPartitionedCall"})

# Reductions: over the channel axis the result is permutation invariant
# (LayerNormalization's mean and variance); over other axes the channels pass
# through (GlobalAveragePooling2D).
REDUCTIONS = frozenset({"Mean", "Sum", "Max"})

# Reshapes that keep the channels' flattened order: Dense on 3-D inputs
# (Tensordot), Flatten of a 1x1 map, Reshape layers, Conv1D's ExpandDims and
# Squeeze, attention splitting the channels into (heads, head_dim) and back.
RESHAPES = frozenset({"Reshape", "Squeeze", "ExpandDims"})

# Transposes move the channel axes with the others (attention's heads).
TRANSPOSES = frozenset({"Transpose"})

# Spatial pooling (NHWC) with a window of 1 along the channels.
POOLING = frozenset({"MaxPool", "AvgPool"})

# Padding with none on the channel axes (ZeroPadding2D).
PADDING = frozenset({"Pad", "PadV2", "MirrorPad"})

# Concatenation along another axis keeps the channels in their places (a
# class token before the tokens); along the channel axis it places its
# inputs' channels side by side, as segments (DenseNet, Inception): a
# permutation of the result permutes each input within its own segment.
CONCATENATION = frozenset({"ConcatV2"})

# Softmax over the channel axis permutes with it; over another axis (the
# keys of attention) it passes the channels through.
SOFTMAX = frozenset({"Softmax", "LogSoftmax"})

# Slices that keep every channel (a class token `x[:, 0]`, a positional
# embedding table cut to the sequence length).
SLICES = frozenset({"StridedSlice", "Slice"})

# Broadcasting along other axes (a positional embedding to the batch).
BROADCASTS = frozenset({"BroadcastTo"})

# Gathering along another axis: rows of an `Embedding` table (a variable
# whose channel axis is K-permuted, as a producer's), or tokens of a tensor.
GATHERS = frozenset({"GatherV2"})

# Products of two tensors batched over heads (attention's `Einsum`s, and
# `matmul` of two tensors): an operand's channels cross when the product
# neither contracts them nor pairs them with the other operand, and the
# batch axes among its channel axes (the heads) split them into segments
# that must be permuted each within itself. `BatchMatMulV2` with a kernel
# variable is a GEMM instead (`EinsumDense`).
PRODUCTS = frozenset({"Einsum", "BatchMatMulV2"})

# Ops that read only the shape of a tensor, never its values (Tensordot).
SHAPE_READERS = frozenset({"Shape", "Size", "Rank"})

# The GEMM ops tf_asp prunes: input 1 is a Keras kernel variable.
ALLOW_OPS = frozenset({"Conv2D", "MatMul", "BatchMatMulV2"})

# Ops the kernel of a GEMM op may pass through on its way from the variable:
# EinsumDense reshapes (and may transpose) it to 2-D, Conv1D expands it to 4-D.
KERNEL_PATH = frozenset({"Identity", "Cast", "Reshape", "ExpandDims", "Transpose"})

INFER_OPS = PER_CHANNEL | DEPTHWISE | GROUPED_CONV_CALLS | ELEMENTWISE_BINARY | GATHERS

CLEAR_OPS = (
    ELEMENTWISE_UNARY
    | IDENTITY_N
    | ELEMENTWISE_BINARY
    | REDUCTIONS
    | RESHAPES
    | TRANSPOSES
    | POOLING
    | PADDING
    | CONCATENATION
    | SOFTMAX
    | SLICES
    | BROADCASTS
    | GATHERS
    | PRODUCTS
    | SHAPE_READERS
)

SKIP_OPS = frozenset(
    {
        "Const",  # scalars (epsilon), shapes, axes
        "Placeholder",  # model inputs and captured variable handles
        "ReadVariableOp",  # a variable's value; resolved to the Keras variable
        "NoOp",  # tf.function's control outputs
    }
)
