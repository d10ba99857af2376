"""Every private Keras (and TensorFlow) access tf_asp makes, in one place.

Keras and TensorFlow have no public API for a few things tf_asp needs; each
function below names the private attribute it uses and why no public one
serves. `tests/test_compat.py` exercises every one, so an upgrade that removes
one fails there, loudly, rather than deep inside a training run.

```python
for layer in compat.flatten_layers(model):   # every layer, nested ones too
    ...
```
"""

import keras
import tensorflow as tf

# Attribute tf_asp sets on an optimizer it wraps, so it is not wrapped twice.
_WRAPPED_FLAG = "_tf_asp_wrapped"


def flatten_layers(model):
    """Every layer inside `model`, recursively, each once, `model` excluded.

    `model.layers` lists only the top level; Keras' own recursive walk
    (`Layer._flatten_layers`) also finds layers nested in models and in
    custom layers' attributes (MultiHeadAttention's EinsumDense layers).
    """
    return list(model._flatten_layers(include_self=False, recursive=True))


def optimizer_variable_key(optimizer, variable):
    """The key a Keras optimizer files a model variable's state under.

    `Optimizer._var_key` also resolves a mirrored variable's replicas to one
    key, which `id(variable)` would not.
    """
    return optimizer._var_key(variable)


def optimizer_trainable_variables(optimizer):
    """The variables the optimizer was built on (`Optimizer._trainable_variables`).

    `apply(grads)` without variables updates these; Keras keeps them private.
    """
    return optimizer._trainable_variables


def optimizer_own_variables(optimizer):
    """The variables the optimizer created itself (`Optimizer._variables`).

    A wrapper's public `variables` adds the wrapped optimizer's; this is the
    wrapper's own list (its masks and counters) without them.
    """
    return optimizer._variables


def no_dependency_tracking(method):
    """Keras' decorator that stops attribute tracking inside `method`.

    An optimizer's `build` assigns dicts of variables; tracked, they would be
    saved twice. Keras exposes the decorator only in `keras.src`.
    """
    from keras.src.utils import tracking

    return tracking.no_automatic_dependency_tracking(method)


def mark_wrapped(optimizer):
    """Flags `optimizer` as wrapped by tf_asp (an attribute on the object)."""
    setattr(optimizer, _WRAPPED_FLAG, True)


def is_wrapped(optimizer):
    """True when `mark_wrapped(optimizer)` was called."""
    return bool(getattr(optimizer, _WRAPPED_FLAG, False))


def tf_variable(variable):
    """The TensorFlow variable behind a Keras variable (`variable.value`).

    On the TensorFlow backend a Keras 3 variable wraps a `tf.Variable`: a plain
    one, or under a `tf.distribute` strategy a distributed one. A `tf.Variable`
    (as tf_keras' are) is its own.
    """
    return variable.value if isinstance(variable, keras.Variable) else variable


def variable_handles(variable):
    """Every resource handle a traced function may capture for a variable.

    A function traced outside a replica context captures the `handle` of the
    TensorFlow variable behind it; under a `tf.distribute` strategy that is a
    `DistributedVariable` whose own `handle` may not be read there, and the
    function captures one of its components instead (`values`, one per local
    replica: the one on the current device, else the primary). So every
    component's handle is listed.
    """
    value = tf_variable(variable)
    if isinstance(value, tf.distribute.DistributedValues):
        return [component.handle for component in value.values]
    return [value.handle]


def is_mirrored_variable(variable):
    """True when a variable is mirrored: one equal component per replica.

    TensorFlow exports no type for it (`MirroredVariable` lives in
    `tensorflow.python.distribute.values`); `tf.distribute.DistributedValues`
    also covers sync-on-read variables, whose replicas differ.
    """
    from tensorflow.python.distribute import values

    return isinstance(tf_variable(variable), values.MirroredVariable)


def is_single_device_variable(variable):
    """True when a variable is a plain resource variable on one device.

    A plain `tf.Variable` is a `ResourceVariable`, a type TensorFlow does not
    export (`tensorflow.python.ops.resource_variable_ops`); `tf.Variable` itself
    is also the base of ParameterServerStrategy's and CentralStorageStrategy's
    aggregating and caching variables.
    """
    from tensorflow.python.ops import resource_variable_ops

    return isinstance(tf_variable(variable), resource_variable_ops.ResourceVariable)


def optimizer_strategy(optimizer):
    """The `tf.distribute` strategy a Keras optimizer was created under.

    Keras' TensorFlow optimizer records it at construction
    (`_distribution_strategy`) and runs every update through it.
    """
    return optimizer._distribution_strategy


def variable_path(variable):
    """A variable's readable path, e.g. `"dense/kernel"`, whichever Keras.

    Keras 3 variables have `path`; a tf_keras variable is a `tf.Variable`,
    whose `name` ends in the output index `":0"`.
    """
    path = getattr(variable, "path", None)
    if path is not None:
        return path
    name = variable.name
    return name[: -len(":0")] if name.endswith(":0") else name


# tf_keras (Keras 2) ----------------------------------------------------------
# Called only with tf_keras objects, so tf_keras is imported inside them.


def build_tf_keras_optimizer(optimizer, var_list):
    """Creates a tf_keras optimizer's state for `var_list` without a step.

    The newer `tf_keras.optimizers.*` have a public `build`; the legacy ones
    (`tf_keras.optimizers.legacy.*`) create their slots in the private
    `_create_all_weights`, which is what tf_keras itself calls before loading
    optimizer weights from an `.h5` file.
    """
    import tf_keras

    if isinstance(optimizer, tf_keras.optimizers.legacy.Optimizer):
        optimizer._create_all_weights(var_list)
    else:
        optimizer.build(var_list)


def set_untracked(trackable, name, value):
    """`setattr(trackable, name, value)`, unseen by TensorFlow's tracking.

    A tf_keras optimizer is a TensorFlow `AutoTrackable`: a dict of variables
    set as its attribute would be saved in checkpoints a second time, under
    keys that change from run to run. TensorFlow exports the switch that
    tf_keras' optimizers use for this only under `tf.__internal__`.
    """
    import tensorflow as tf

    @tf.__internal__.tracking.no_automatic_dependency_tracking
    def assign(self):
        setattr(self, name, value)

    assign(trackable)


def is_built(optimizer):
    """Whether a newer tf_keras optimizer (or a subclass) has built its state.

    `build` is public, but its flag `_built` is the subclassing convention
    tf_keras' own optimizers follow, with no public accessor.
    """
    return bool(getattr(optimizer, "_built", False))


def mark_built(optimizer):
    """Sets the flag `is_built` reads (see there)."""
    optimizer._built = True
