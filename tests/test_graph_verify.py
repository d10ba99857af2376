"""The verification batch reaches every weight a permutation could break."""

import keras
import numpy as np
import pytest
from helpers import small_mlp

import tf_asp
from tf_asp.graph import permute_model
from tf_asp.graph import verify
from tf_asp.graph.trace import trace_model

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers


def token_model(vocabulary=300, length=8, width=32):
    tokens = keras.Input((length,), dtype="int32", name="tokens")
    x = layers.Embedding(vocabulary, width, name="embedding")(tokens)
    x = layers.Dense(32, activation="relu", name="hidden")(x)
    return keras.Model(tokens, layers.Dense(16, name="out")(x))


def test_token_ids_cover_every_embedding_row():
    graph = trace_model(token_model(vocabulary=300, length=8))
    (tokens,) = verify.verification_inputs(graph)
    assert tokens.shape == (38, 8)  # 300 rows need 38 samples of 8 tokens
    assert tokens.dtype == np.int32
    assert set(np.unique(tokens)) == set(range(300))


def test_a_wrong_permutation_of_one_embedding_row_is_caught():
    model = token_model()
    graph = trace_model(model)
    inputs = verify.verification_inputs(graph)
    before, before_on_trace_batch = graph.run(inputs), graph.run()
    table = model.get_layer("embedding").embeddings
    wrong = table.numpy()
    wrong[257, [3, 5]] = wrong[257, [5, 3]]  # one row's channels swapped, no other
    table.assign(wrong)
    assert verify.relative_error(before, graph.run(inputs)) > 1e-4
    # The 0/1 token ids the graph was traced with never read row 257.
    assert set(np.unique(graph.sample_inputs[0])) <= {0, 1}
    assert verify.relative_error(before_on_trace_batch, graph.run()) == 0.0


def test_index_range_follows_the_ids_through_reshapes_to_the_smallest_table():
    tokens = keras.Input((4,), dtype="int32")
    ids = layers.Reshape((4, 1))(tokens)
    ids = layers.Reshape((4,))(ids)
    wide = layers.Embedding(500, 8)(ids)
    narrow = layers.Embedding(40, 8)(tokens)
    model = keras.Model(tokens, layers.Add()([wide, narrow]))
    graph = trace_model(model)
    assert verify.index_range(graph, graph.inputs[0]) == 40


def test_integer_inputs_that_index_nothing_use_the_documented_range():
    counts = keras.Input((16,), dtype="int32")
    model = keras.Model(counts, layers.Dense(8)(keras.ops.cast(counts, "float32")))
    graph = trace_model(model)
    (values,) = verify.verification_inputs(graph)
    assert values.shape == (2, 16)
    assert 0 <= values.min() and values.max() < verify.INTEGER_RANGE


def test_large_tables_grow_the_batch_only_up_to_the_cap():
    graph = trace_model(token_model(vocabulary=100_000, length=128, width=8))
    (tokens,) = verify.verification_inputs(graph)
    assert tokens.size == verify.MAX_INDEX_ELEMENTS
    assert len(np.unique(tokens)) == verify.MAX_INDEX_ELEMENTS  # no row twice


def test_float_inputs_are_a_normal_batch_of_the_traced_size():
    graph = trace_model(small_mlp())
    (x,) = verify.verification_inputs(graph, seed=3)
    assert x.shape == (2, 32) and x.dtype == np.float32
    np.testing.assert_array_equal(x, verify.verification_inputs(graph, seed=3)[0])


def test_users_can_give_their_own_verification_batch():
    model = small_mlp()
    batch = np.random.default_rng(0).standard_normal((5, 32)).astype("float32")
    summary = permute_model(model, search_device="numpy", verify_inputs=batch)
    assert summary.error is not None and summary.error <= 1e-5
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(), small_mlp(), search_device="numpy", verify_inputs=[batch]
    )
    assert optimizer.permutation_summary.error <= 1e-5


@pytest.mark.parametrize(
    "batch, message",
    [
        (
            np.zeros((5, 31), "float32"),
            r"shape \(5, 31\); model input 0 takes \(batch,\) \+ \(32,\)",
        ),
        ([np.zeros((5, 32)), np.zeros((5, 32))], "holds 2 arrays, but model 'sequential' has 1"),
    ],
)
def test_a_verification_batch_that_does_not_fit_is_refused(batch, message):
    model = small_mlp()
    weights = [v.numpy() for v in model.weights]
    with pytest.raises(ValueError, match=message):
        permute_model(model, search_device="numpy", verify_inputs=batch)
    for saved, variable in zip(weights, model.weights):
        np.testing.assert_array_equal(saved, variable.numpy())


def test_permuting_emits_no_deprecation_warning():
    """NumPy 2 warns when a variable is read with np.array(variable); tf_asp
    reads them with .numpy() (the test settings also make tf_asp's own
    DeprecationWarnings errors, so none can come back unseen)."""
    import warnings

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(), token_model(), search_device="numpy")
    ours = [
        w for w in caught if issubclass(w.category, DeprecationWarning) and "tf_asp" in w.filename
    ]
    assert ours == [], [str(w.message) for w in ours]
