"""`AspOptimizerWrapperV2` for tf_keras (Keras 2) models and optimizers.

`tf_asp.AspOptimizerWrapperV2(optimizer, model, ...)` returns this wrapper
when it is given tf_keras objects, so the original TF-ASP usage works as it
was written (with `import tf_keras`, or `tf.keras` under
`TF_USE_LEGACY_KERAS=1`):

```python
opt = tf_keras.optimizers.legacy.SGD(learning_rate=0.2, momentum=1.0)
opt = tf_asp.AspOptimizerWrapperV2(opt, model, padding=True, plot_to_file="network.pdf")
model.compile(optimizer=opt, loss="mse")
model.fit(x, y)
```

It is the Keras 3 wrapper's twin, a thin layer over the same core
(`tf_asp.pruning`): a `tf_keras.optimizers.Optimizer` that wraps either kind
of tf_keras optimizer, legacy (`tf_keras.optimizers.legacy.*`) or newer
(`tf_keras.optimizers.*`), and hands every update to it. Importing this
module imports tf_keras; tf_asp imports it only when it meets a tf_keras
object.
"""

import tensorflow as tf
import tf_keras

from tf_asp import compat
from tf_asp import pruning

_TF_KERAS_OPTIMIZERS = (tf_keras.optimizers.Optimizer, tf_keras.optimizers.legacy.Optimizer)


@tf_keras.saving.register_keras_serializable(package="tf_asp")
class AspOptimizerWrapperV2(tf_keras.optimizers.Optimizer):
    """Wraps a tf_keras optimizer so that fine-tuning yields a 2:4 sparse model.

    Arguments and behaviour are those of `tf_asp.AspOptimizerWrapperV2` (the
    Keras 3 wrapper): channels are permuted at construction, masks are
    computed at the first step and frozen, and every step masks the
    gradients, lets `optimizer` update, and masks the kernels again. The
    masks are optimizer variables: `tf.train.Checkpoint`, TF-format
    `model.save_weights`, and `model.save` to `.h5` or a SavedModel directory
    keep them.

    Example:

    ```python
    model = tf_keras.applications.ResNet50(weights="imagenet")
    optimizer = tf_asp.AspOptimizerWrapperV2(
        tf_keras.optimizers.legacy.SGD(1e-3, momentum=0.9), model)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(dataset, epochs=10)  # fine-tune: kernels stay 2:4
    ```
    """

    def __init__(
        self,
        optimizer,
        model,
        input_shapes=None,
        padding=False,
        permute=True,
        search_device="auto",
        search_time_limit=60,
        plot_to_file=None,
        verify_permutation=True,
        verify_inputs=None,
        pattern="2:4",
        transposable=False,
        criterion="magnitude",
        calibration_data=None,
        name=None,
        **kwargs,
    ):
        # `masked_variables` comes from `from_config` only (see the Keras 3 wrapper).
        pruning.check_same_keras(optimizer, model)
        _check_optimizer(optimizer)
        options = pruning.PruningOptions(
            padding=padding,
            permute=permute,
            input_shapes=input_shapes,
            search_device=search_device,
            search_time_limit=search_time_limit,
            plot_to_file=plot_to_file,
            verify_permutation=verify_permutation,
            verify_inputs=verify_inputs,
            pattern=pattern,
            transposable=transposable,
            criterion=criterion,
        )
        start = pruning.start_wrapper(model, options, calibration_data, kwargs, _check_model)

        super().__init__(name=name or "AspOptimizerWrapperV2")
        self.inner_optimizer = optimizer
        self.padding = options.padding
        self.search_device = options.search_device
        self.search_time_limit = options.search_time_limit
        self.permutation_summary = start.summary
        # Plain objects, kept out of checkpoints (the masks are saved as variables).
        compat.set_untracked(self, "options", options)
        compat.set_untracked(self, "_masks", {})  # built: {key: MaskedKernel}
        compat.set_untracked(self, "_specs", start.specs)  # id(kernel) -> MaskSpec, once known
        compat.set_untracked(self, "_norms", start.norms)  # id(kernel) -> activation norms
        compat.set_untracked(self, "masked_variables", start.masked_variables)
        compat.mark_wrapped(optimizer)

    def build(self, var_list):
        super().build(var_list)
        if compat.is_built(self):
            return
        compat.build_tf_keras_optimizer(self.inner_optimizer, var_list)
        if self._specs is None:
            specs = pruning.restored_specs(
                var_list, self.masked_variables, type(self).__name__, self.options
            )
            compat.set_untracked(self, "_specs", specs)
        masks = pruning.build_masks(
            var_list,
            self._specs,
            self._var_key,
            lambda kernel: self.add_variable_from_reference(
                kernel, "asp_mask", initial_value=tf.ones(kernel.shape, kernel.dtype)
            ),
            self._add_scale if self.options.criterion == "activation" else None,
            self._norms,
        )
        compat.set_untracked(self, "_masks", masks)
        compat.mark_built(self)

    def _add_scale(self, kernel, values):
        return self.add_variable_from_reference(
            kernel, "asp_channel_norms", shape=values.shape, initial_value=tf.constant(values)
        )

    @property
    def masks(self):
        """The mask variables, one per pruned kernel (after `build`)."""
        return [entry.mask for entry in self._masks.values()]

    @property
    def channel_norms(self):
        """The activation-norm variables (`criterion="activation"`), else []."""
        return [entry.scale for entry in self._masks.values() if entry.scale is not None]

    @property
    def variables(self):
        """The masks (and activation norms), then the wrapped optimizer's variables.

        A list that is callable too, like every tf_keras optimizer's
        `variables`. The step counter that tf_keras' base class gives the
        wrapper is left out: it stays 0 (`iterations` is the wrapped
        optimizer's), and its name would clash with that one's in `.h5` files.
        """
        variables = super().variables  # a fresh list of tf_keras' callable kind
        variables[:] = self.masks + self.channel_norms + list(self.inner_optimizer.variables())
        return variables

    def set_weights(self, weights):
        """Loads `variables` from values (what `.h5` model files hold)."""
        variables = self.variables
        if len(weights) != len(variables):
            raise ValueError(
                f"{self.name} has {len(variables)} variables; got {len(weights)} values."
            )
        for variable, weight in zip(variables, weights):
            variable.assign(weight)

    def apply_gradients(self, grads_and_vars, name=None, **kwargs):
        """Masks, updates with the wrapped optimizer, masks again.

        `kwargs` go to the wrapped optimizer's `apply_gradients` (such as a
        legacy optimizer's `experimental_aggregate_gradients`).
        """
        grads_and_vars = list(grads_and_vars)
        if not grads_and_vars:
            return self.iterations
        grads, variables = (list(t) for t in zip(*grads_and_vars))
        with tf.init_scope():
            self.build(variables)
        return pruning.masked_update(
            self.iterations,
            self._masks,
            self._var_key,
            grads,
            variables,
            lambda masked: self.inner_optimizer.apply_gradients(
                zip(masked, variables), name=name, **kwargs
            ),
        )

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        # Newer optimizers' moving average (use_ema=True) overwrites the kernels.
        finalize = getattr(self.inner_optimizer, "finalize_variable_values", None)
        if finalize is not None:
            finalize(var_list)
        pruning.apply_masks(pruning.masked_kernels(self._masks, self._var_key, var_list))

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": tf_keras.optimizers.serialize(self.inner_optimizer),
            **pruning.saved_options(self.options, self.masked_variables),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        # A copy: tf_keras' deserialize lower-cases the class name in place.
        inner = tf_keras.optimizers.deserialize(
            dict(config.pop("inner_optimizer")), custom_objects=custom_objects
        )
        # The saved weights are already permuted: never permute again.
        return cls(inner, model=None, permute=False, **config)


@tf_keras.saving.register_keras_serializable(package="tf_asp")
class AspOptimizerWrapper(AspOptimizerWrapperV2):
    """Deprecated: use `AspOptimizerWrapperV2`. Prunes without permuting.

    `tf_asp.AspOptimizerWrapper` warns before it builds this class.
    """

    def __init__(self, optimizer, model, padding=False, name=None, **kwargs):
        kwargs["permute"] = False
        super().__init__(optimizer, model, padding=padding, name=name, **kwargs)


def _check_optimizer(optimizer):
    if isinstance(optimizer, AspOptimizerWrapperV2):
        raise ValueError(
            "This optimizer is already an AspOptimizerWrapperV2; wrap the plain optimizer once."
        )
    if not isinstance(optimizer, _TF_KERAS_OPTIMIZERS):
        raise TypeError(
            "AspOptimizerWrapperV2 wraps a tf_keras optimizer (tf_keras.optimizers.* or "
            f"tf_keras.optimizers.legacy.*) for a tf_keras model; got {type(optimizer).__name__}."
        )
    if compat.is_wrapped(optimizer):
        raise ValueError(
            f"This {type(optimizer).__name__} optimizer is already wrapped by an "
            "AspOptimizerWrapperV2. Create a new optimizer for each wrapper."
        )


def _check_model(model):
    if not isinstance(model, tf_keras.Model):
        raise TypeError(
            "AspOptimizerWrapperV2 needs a tf_keras.Model to prune with a tf_keras optimizer; "
            f"got {type(model).__name__}."
        )
    pruning.check_built(model)
