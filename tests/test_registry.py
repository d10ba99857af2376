"""The registry: which layers hold GEMM kernels, their axes, and what is pruned."""

import keras
import numpy as np
import pytest

import tf_asp
from tf_asp import registry

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers


def described(layer, input_shape):
    layer.build((None,) + tuple(input_shape))
    return registry.describe(layer)


@pytest.mark.parametrize(
    "layer, input_shape, kernel_shape, input_axes, output_axes",
    [
        (layers.Dense(32), (64,), (64, 32), (0,), (1,)),
        (layers.Conv1D(32, 3), (10, 64), (3, 64, 32), (1,), (2,)),
        (layers.Conv2D(32, 3), (8, 8, 64), (3, 3, 64, 32), (2,), (3,)),
        (layers.SeparableConv2D(32, 3), (8, 8, 64), (1, 1, 64, 32), (2,), (3,)),
        (layers.SeparableConv1D(32, 3), (10, 64), (1, 64, 32), (1,), (2,)),
        (layers.EinsumDense("abc,cde->abde", (None, 4, 16)), (10, 64), (64, 4, 16), (0,), (1, 2)),
        (layers.EinsumDense("abcd,cde->abe", (None, 64)), (10, 4, 16), (4, 16, 64), (0, 1), (2,)),
        (layers.EinsumDense("ab,bc->ac", 32), (64,), (64, 32), (0,), (1,)),
    ],
    ids=[
        "Dense",
        "Conv1D",
        "Conv2D",
        "SeparableConv2D",
        "SeparableConv1D",
        "query",
        "output",
        "ab",
    ],
)
def test_supported_layers_name_their_kernel_and_its_input_axes(
    layer, input_shape, kernel_shape, input_axes, output_axes
):
    gemm = described(layer, input_shape)
    (kernel,) = gemm.kernels
    assert gemm.reason is None
    assert kernel.shape == kernel_shape
    assert (kernel.input_axes, kernel.output_axes) == (input_axes, output_axes)
    assert kernel.unprunable_reason() is None
    assert gemm.prunable_kernels() == [kernel]


def test_separable_convolution_prunes_the_pointwise_kernel_not_the_depthwise_one():
    layer = layers.SeparableConv2D(32, 3)
    (kernel,) = described(layer, (8, 8, 64)).kernels
    assert kernel.variable is layer.pointwise_kernel


@pytest.mark.parametrize(
    "layer, input_shape, reason",
    [
        (layers.Conv2D(32, 3, groups=2), (8, 8, 64), "grouped convolution"),
        (layers.Conv2DTranspose(32, 3), (8, 8, 64), "transposed convolutions"),
        (layers.Conv1DTranspose(32, 3), (8, 64), "transposed convolutions"),
        (layers.Conv3D(32, 3), (4, 4, 4, 64), "Conv3D"),
        (layers.LSTMCell(32), (64,), "recurrent cells"),
        (layers.EinsumDense("abc,cd->abd", (None, 32)), (10, 64), None),
        (layers.EinsumDense("abcd,cde->abce", (None, 8, 32)), (4, 8, 64), "kernel axis 'c'"),
    ],
    ids=["grouped", "Conv2DTranspose", "Conv1DTranspose", "Conv3D", "LSTMCell", "einsum", "batch"],
)
def test_other_gemm_layers_are_described_with_why_they_stay_dense(layer, input_shape, reason):
    gemm = described(layer, input_shape)
    assert gemm is not None
    if reason is None:
        assert gemm.reason is None
    else:
        assert reason in gemm.reason
        assert gemm.prunable_kernels() == []
        assert reason in gemm.unprunable_reason()


@pytest.mark.parametrize(
    "layer, input_shape",
    [
        (layers.DepthwiseConv2D(3), (8, 8, 16)),
        (layers.BatchNormalization(), (8, 8, 16)),
        (layers.Embedding(100, 16), (8,)),
        (layers.LayerNormalization(), (16,)),
    ],
)
def test_layers_without_a_gemm_are_not_described(layer, input_shape):
    assert described(layer, input_shape) is None


@pytest.mark.parametrize(
    "layer, input_shape, padding, reason",
    [
        (layers.Dense(8), (16,), False, None),
        (layers.Dense(8), (24,), False, "input dim 24 of kernel (24, 8) is not a multiple of 16"),
        (layers.Dense(8), (24,), True, None),
        (layers.Dense(12), (16,), False, "output dim 12"),
        (layers.Conv2D(8, 3), (8, 8, 16), False, None),
        (layers.Conv2D(8, 3), (8, 8, 24), True, "input dim 24"),
        (layers.EinsumDense("abc,cde->abde", (None, 2, 6)), (4, 16), False, "output dim 12"),
        (layers.EinsumDense("abc,cde->abde", (None, 2, 8)), (4, 24), True, None),
        (layers.EinsumDense("abcd,cde->abe", (None, 8)), (4, 3, 8), False, "input dim 24"),
    ],
)
def test_shape_rule_is_that_of_sparse_tensor_cores(layer, input_shape, padding, reason):
    found = described(layer, input_shape).unprunable_reason(padding=padding)
    if reason is None:
        assert found is None
    else:
        assert reason in found


def test_padding_hint_is_given_only_where_padding_helps():
    assert "padding=True" in described(layers.Dense(8), (24,)).unprunable_reason()
    assert "padding=True" not in described(layers.Conv2D(8, 3), (8, 8, 24)).unprunable_reason()


def test_unbuilt_layer_is_described_as_not_built():
    assert "not built" in registry.describe(layers.Dense(8)).reason


@pytest.mark.parametrize(
    "equation, axes",
    [
        ("abc,cde->abde", ((0,), (1, 2))),
        ("abcd,cde->abe", ((0, 1), (2,))),
        ("...b,bc->...c", ((0,), (1,))),
        ("ab,cb->ac", ((1,), (0,))),
    ],
)
def test_einsum_axes_of_gemm_equations(equation, axes):
    assert registry.einsum_axes(equation) == axes


@pytest.mark.parametrize(
    "equation, message",
    [
        ("abc,bcd->abd", "kernel axis 'b' is also an input and output axis"),
        ("abc,cde->ab", "kernel axis 'd' is summed away"),
        ("ab,...b->a", "not a GEMM"),
        ("abc->abc", "not of the form"),
        ("ab,cd->abcd", "does not contract"),
    ],
)
def test_einsum_equations_that_are_not_a_gemm_say_why(equation, message):
    with pytest.raises(ValueError, match=message):
        registry.einsum_axes(equation)


def test_gemm_view_flattens_input_axes_in_kernel_order():
    value = np.arange(4 * 16 * 8).reshape(4, 16, 8)
    kernel = registry.GemmKernel(keras.Variable(value.astype("float32")), (0, 1), (2,))
    np.testing.assert_array_equal(kernel.gemm_matrix(value), value.reshape(64, 8))
    np.testing.assert_array_equal(kernel.search_matrix(value), value.reshape(64, 8).T)


def test_conv_search_matrix_has_one_row_per_output_and_tap():
    value = np.random.default_rng(0).standard_normal((3, 3, 16, 8))
    kernel = registry.GemmKernel(keras.Variable(value.astype("float32")), (-2,), (-1,))
    np.testing.assert_array_equal(
        kernel.search_matrix(value), value.transpose(3, 0, 1, 2).reshape(-1, 16)
    )


def test_bad_axes_are_refused():
    variable = keras.Variable(np.zeros((4, 8), "float32"))
    with pytest.raises(ValueError, match="both input and output"):
        registry.GemmKernel(variable, (0,), (0,))
    with pytest.raises(ValueError, match="not distinct axes"):
        registry.GemmKernel(variable, (2,), (1,))


class Projection(layers.Layer):
    """A custom GEMM layer that tells tf_asp about its kernel."""

    def build(self, input_shape):
        self.w = self.add_weight(shape=(input_shape[-1], 32), name="w")

    def call(self, x):
        return x @ self.w

    def tf_asp_gemm_kernels(self):
        return [tf_asp.GemmKernel(self.w, input_axes=(0,), output_axes=(1,))]


class UnknownProjection(layers.Layer):
    def build(self, input_shape):
        self.kernel = self.add_weight(shape=(input_shape[-1], 32), name="kernel")

    def call(self, x):
        return x @ self.kernel


def test_custom_layer_is_described_by_its_own_method():
    gemm = described(Projection(), (64,))
    assert gemm.reason is None and gemm.kernels[0].shape == (64, 32)


def test_unknown_layer_with_a_kernel_is_a_gemm_layer_tf_asp_does_not_know():
    gemm = described(UnknownProjection(), (64,))
    assert "tf_asp_gemm_kernels" in gemm.reason


def test_a_protocol_method_must_return_gemm_kernels():
    class Broken(Projection):
        def tf_asp_gemm_kernels(self):
            return [self.w]

    with pytest.raises(TypeError, match="must return GemmKernel"):
        described(Broken(), (64,))


def test_gemm_layers_walks_nested_layers_each_once():
    x = keras.Input((10, 64))
    attention = layers.MultiHeadAttention(4, 16, name="attention")
    y = layers.Dense(64, name="ffn")(attention(x, x))
    inner = keras.Model(x, y, name="inner")
    z = keras.Input((10, 64))
    model = keras.Model(z, layers.Dense(16, name="head")(inner(z)))
    names = [g.name for g in registry.gemm_layers(model)]
    assert sorted(names) == ["attention_output", "ffn", "head", "key", "query", "value"]


def test_custom_layer_is_pruned_by_the_wrapper():
    x = keras.Input((64,))
    model = keras.Model(x, Projection(name="projection")(x))
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, permute=False)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((8, 64)), np.zeros((8, 32)), verbose=0)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (1, 1)
