"""Every private Keras access in tf_asp/compat.py still works.

A Keras upgrade that removes or changes one fails here, by name."""

import keras
import pytest
import tensorflow as tf

from tf_asp import compat

pytestmark = pytest.mark.usefixtures("fresh_keras")


def nested_model():
    x = keras.Input((10, 64))
    attention = keras.layers.MultiHeadAttention(4, 16, name="attention")
    inner = keras.Model(x, attention(x, x), name="inner")
    y = keras.Input((10, 64))
    return keras.Model(y, keras.layers.Dense(8, name="head")(inner(y)), name="outer")


def test_flatten_layers_finds_nested_layers_each_once_without_the_model():
    model = nested_model()
    names = [layer.name for layer in compat.flatten_layers(model)]
    assert {"inner", "attention", "query", "key", "value", "attention_output", "head"} <= set(names)
    assert "outer" not in names
    assert len(names) == len(set(names))


def test_optimizer_variable_keys_and_lists():
    model = nested_model()
    optimizer = keras.optimizers.Adam()
    optimizer.build(model.trainable_variables)
    keys = [compat.optimizer_variable_key(optimizer, v) for v in model.trainable_variables]
    assert len(set(keys)) == len(keys)
    assert compat.optimizer_variable_key(optimizer, model.trainable_variables[0]) == keys[0]
    assert list(compat.optimizer_trainable_variables(optimizer)) == model.trainable_variables
    own = compat.optimizer_own_variables(optimizer)
    assert optimizer.iterations in own and len(own) > len(keys)  # moments + counters


def test_no_dependency_tracking_keeps_assigned_dicts_out_of_the_checkpoint():
    class Holder(keras.layers.Layer):
        @compat.no_dependency_tracking
        def keep(self, variable):
            self.kept = {"v": variable}

    holder = Holder()
    holder.keep(keras.Variable(1.0))
    assert holder.weights == []


def test_wrapped_flag_round_trip():
    optimizer = keras.optimizers.SGD()
    assert not compat.is_wrapped(optimizer)
    compat.mark_wrapped(optimizer)
    assert compat.is_wrapped(optimizer)


STRATEGIES = {
    "default": tf.distribute.get_strategy,
    "one_device": lambda: tf.distribute.OneDeviceStrategy("/cpu:0"),
    "mirrored": lambda: tf.distribute.MirroredStrategy(["/cpu:0"]),
}


@pytest.mark.parametrize("strategy", sorted(STRATEGIES))
def test_a_traced_function_captures_one_handle_of_each_variable(strategy):
    with STRATEGIES[strategy]().scope():
        model = nested_model()
        spec = tf.TensorSpec((2, 10, 64))
        function = tf.function(lambda x: model(x)).get_concrete_function(spec)
    captured = {id(t) for t in function.captured_inputs}
    for variable in model.variables:
        handles = compat.variable_handles(variable)
        assert sum(id(h) in captured for h in handles) == 1, variable.path


def test_tf_variable_is_the_tensorflow_variable_behind_a_keras_one():
    variable = keras.Variable(1.0)
    assert isinstance(compat.tf_variable(variable), tf.Variable)
    plain = tf.Variable(1.0)
    assert compat.tf_variable(plain) is plain


def test_mirrored_single_device_and_other_variables_are_told_apart():
    def kind(variable):
        return compat.is_mirrored_variable(variable), compat.is_single_device_variable(variable)

    kinds = {}
    for name, strategy in STRATEGIES.items():
        with strategy().scope():
            kinds[name] = kind(keras.Variable(1.0))
    with STRATEGIES["mirrored"]().scope():
        # One value per replica, summed when read: not mirrored.
        kinds["sync_on_read"] = kind(
            keras.Variable(1.0, synchronization="on_read", aggregation="sum")
        )
    assert kinds == {
        "default": (False, True),
        "one_device": (False, True),
        "mirrored": (True, False),
        "sync_on_read": (False, False),
    }


def test_optimizer_strategy_is_the_scope_it_was_created_in():
    strategy = tf.distribute.MirroredStrategy(["/cpu:0"])
    with strategy.scope():
        inside = keras.optimizers.SGD()
    outside = keras.optimizers.SGD()
    assert compat.optimizer_strategy(inside) is strategy
    assert compat.optimizer_strategy(outside) is tf.distribute.get_strategy()


def captured_handle_ids(model, shape):
    spec = tf.TensorSpec(shape)
    function = tf.function(lambda x: model(x)).get_concrete_function(spec)
    return {id(t) for t in function.captured_inputs}


def test_a_traced_tf_keras_function_captures_a_variable_handle_of_every_variable():
    import tf_keras

    inputs = tf_keras.Input((8, 8, 16))
    x = tf_keras.layers.Conv2D(32, 3)(inputs)
    x = tf_keras.layers.BatchNormalization()(x)
    model = tf_keras.Model(inputs, tf_keras.layers.Dense(8)(x))
    captured = captured_handle_ids(model, (2, 8, 8, 16))
    assert len(model.variables) == 8
    assert all(any(id(h) in captured for h in compat.variable_handles(v)) for v in model.variables)


def test_variable_paths_whichever_keras():
    layer = keras.layers.Dense(4, name="head")
    layer.build((None, 3))
    assert compat.variable_path(layer.kernel) == "head/kernel"
    import tf_keras

    model = tf_keras.Sequential([tf_keras.Input((3,)), tf_keras.layers.Dense(4, name="head")])
    assert model.layers[0].kernel.name == "head/kernel:0"
    assert compat.variable_path(model.layers[0].kernel) == "head/kernel"


# tf_keras (Keras 2) ----------------------------------------------------------


@pytest.mark.parametrize("kind", ["legacy", "newer"])
def test_a_tf_keras_optimizer_builds_its_state_without_a_step(kind):
    import tf_keras

    optimizers = tf_keras.optimizers
    optimizer = optimizers.legacy.Adam() if kind == "legacy" else optimizers.Adam()
    model = tf_keras.Sequential([tf_keras.Input((4,)), tf_keras.layers.Dense(8)])
    compat.build_tf_keras_optimizer(optimizer, model.trainable_variables)
    shapes = sorted(tuple(v.shape) for v in optimizer.variables() if v.shape.rank)
    assert shapes == [(4, 8), (4, 8), (8,), (8,)]  # two moments per variable
    assert int(optimizer.iterations) == 0


def test_set_untracked_keeps_variables_out_of_checkpoints(tmp_path):
    holder = tf.Module()
    holder.tracked = {"v": tf.Variable(1.0)}
    compat.set_untracked(holder, "kept", {"v": tf.Variable(2.0)})
    assert type(holder.kept) is dict
    path = tf.train.Checkpoint(holder=holder).save(str(tmp_path / "ckpt"))
    names = [name for name, _ in tf.train.list_variables(path)]
    assert any("tracked" in name for name in names)
    assert not any("kept" in name for name in names)


def test_the_tf_keras_built_flag_round_trip():
    import tf_keras

    optimizer = tf_keras.optimizers.SGD()
    assert not compat.is_built(optimizer)
    optimizer.build([tf.Variable(1.0)])
    assert compat.is_built(optimizer)
    other = tf_keras.optimizers.SGD()
    compat.mark_built(other)
    assert compat.is_built(other)
