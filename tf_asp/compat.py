"""Every private Keras access tf_asp makes, in one place.

Keras has no public API for a few things tf_asp needs; each function below
names the private attribute it uses and why no public one serves.
`tests/test_compat.py` exercises every one, so a Keras upgrade that removes
one fails there, loudly, rather than deep inside a training run.

```python
for layer in compat.flatten_layers(model):   # every layer, nested ones too
    ...
```
"""

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


def variable_handles(variable):
    """Every resource handle a traced function may capture for `variable`.

    A Keras 3 variable wraps a `tf.Variable` (`variable.value`) and a traced
    function captures that one's `handle`; a tf_keras variable (and its mixed
    precision `AutoCastVariable`) is a `tf.Variable` itself, captured as
    `variable.handle`.
    """
    import tensorflow as tf

    tf_variable = variable if isinstance(variable, tf.Variable) else variable.value
    return [tf_variable.handle]


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
