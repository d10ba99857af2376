"""`AspOptimizerWrapperV2`: a Keras optimizer that keeps a model 2:4 sparse."""

import warnings

import keras
import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp import masks
from tf_asp import registry
from tf_asp.graph import permute_model
from tf_asp.graph.plot import check_plot_path
from tf_asp.log import logger
from tf_asp.search import check_device
from tf_asp.search import check_time_limit


@keras.saving.register_keras_serializable(package="tf_asp")
class AspOptimizerWrapperV2(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer so that fine-tuning yields a 2:4 sparse model.

    At construction the wrapper finds the prunable kernels of `model` (every
    GEMM kernel `tf_asp.registry` supports, Dense, EinsumDense and
    convolutions, whose input size is a multiple of 16 and output size a
    multiple of 8) and, with `permute=True`, permutes channels so that 2:4
    pruning keeps as much weight magnitude as possible while the model still
    computes the same function. Nothing is pruned yet.

    At the first optimizer step (iteration 0) it computes a 2:4 mask for
    every prunable kernel from its current weights, keeping the 2 largest
    magnitudes of every 4 input channels. The masks are then frozen: every
    step masks the gradients, lets the wrapped optimizer update, and masks
    the kernels again, so a pruned weight stays exactly 0.0 whatever the
    optimizer's slots (momentum, Adam moments) hold. The masks are optimizer
    variables, saved and restored with checkpoints and `.keras` files.

    Args:
        optimizer: the `keras.optimizers.Optimizer` to wrap (SGD, Adam,
            AdamW, RMSprop, ...). It does the actual updates.
        model: the built Keras model to prune.
        input_shapes: the model's input shape (without batch dim), a
            `tf.TensorSpec`, or a list of them for a multi-input model; only
            needed for permutation when the model cannot tell its inputs.
        padding: also prune Dense kernels whose input dim is not a multiple of
            16; a last partial group of `n` channels keeps `ceil(n / 2)`.
        permute: search and apply channel permutations before pruning.
        search_device: `"auto"`, `"GPU"`, `"CPU"` or `"numpy"`: where the
            permutation search runs.
        search_time_limit: seconds each permutation search may take (None:
            no limit); past it the best permutation so far is used.
        plot_to_file: path of an op-graph plot showing what was permuted and
            pruned (`.png`, `.pdf`, `.svg` or `.dot`).
        verify_permutation: check that the permuted model computes the same
            outputs as before (restoring the weights and raising if not).
        verify_inputs: the batch to check that on (an array, or a list or
            dict of them like the model's inputs); by default a generated
            one (see `tf_asp.graph.verify`).
        name: the optimizer's name.

    Example:

    ```python
    model = keras.applications.ResNet50(weights="imagenet")
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(1e-3, momentum=0.9), model)
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
        name=None,
        **kwargs,
    ):
        # `masked_variables` comes from `from_config` only: a restored wrapper
        # knows its pruned kernels by position among the model's trainable
        # variables (variable paths change when a model is reloaded).
        masked_variables = kwargs.pop("masked_variables", None)
        if kwargs:
            raise TypeError(
                f"AspOptimizerWrapperV2 got unexpected arguments: "
                f"{sorted(kwargs)}. Set optimizer options such as "
                "learning_rate or weight_decay on the wrapped optimizer."
            )
        _check_optimizer(optimizer)
        search_device = check_device(search_device, "search_device")
        check_time_limit(search_time_limit, "search_time_limit")
        if plot_to_file is not None:
            check_plot_path(plot_to_file, "plot_to_file")
        if model is None and masked_variables is None:
            raise TypeError("AspOptimizerWrapperV2 needs the `model` to prune.")

        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.padding = bool(padding)
        self.search_device = search_device
        self.search_time_limit = search_time_limit
        self.permutation_summary = None
        self._input_axes = None  # id(kernel) -> its input axes, once known

        if model is not None:
            _check_model(model)
            kernels = _prunable_kernels(model, self.padding)
            _check_finite({name: kernel.variable for name, kernel in kernels.items()})
            if permute:
                self.permutation_summary = permute_model(
                    model,
                    input_shapes=input_shapes,
                    padding=self.padding,
                    search_device=search_device,
                    search_time_limit=search_time_limit,
                    plot_to_file=plot_to_file,
                    verify=verify_permutation,
                    verify_inputs=verify_inputs,
                )
            elif plot_to_file is not None:
                raise ValueError(
                    "plot_to_file draws the permutation of the op graph; it needs permute=True."
                )
            self._input_axes = {id(k.variable): k.input_axes for k in kernels.values()}
            masked_variables = _positions(model.trainable_variables, kernels)
            if not kernels:
                message = (
                    f"Model '{model.name}' has no prunable GEMM layer (input size a multiple "
                    "of 16, output size a multiple of 8); it will be trained densely. "
                    "tf_asp.set_verbosity('INFO') tells why for each layer."
                )
                warnings.warn(message, stacklevel=2)
            logger.info(
                "Will prune %d kernels to 2:4 at the first step: %s",
                len(kernels),
                ", ".join(kernels),
            )
        self.masked_variables = dict(masked_variables)
        compat.mark_wrapped(optimizer)

    @compat.no_dependency_tracking
    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        if self._input_axes is None:
            self._input_axes = self._find_restored_kernels(var_list)
        self._masks = {}
        self._mask_axes = {}
        for variable in var_list:
            if id(variable) in self._input_axes:
                _check_finite({variable.path: variable})
                mask = self.add_variable_from_reference(
                    variable, name="asp_mask", initializer="ones"
                )
                key = compat.optimizer_variable_key(self, variable)
                self._masks[key] = mask
                self._mask_axes[key] = self._input_axes[id(variable)]
        super().build(var_list)

    def _find_restored_kernels(self, var_list):
        """Finds the pruned kernels of a wrapper made by `from_config`."""
        count = self.masked_variables["trainable_variable_count"]
        if len(var_list) != count:
            raise ValueError(
                f"This restored {type(self).__name__} prunes a model with "
                f"{count} trainable variables but is being built on "
                f"{len(var_list)}. Build it on model.trainable_variables of "
                "the model it was saved with."
            )
        input_axes = {}
        for index, shape, *axes in self.masked_variables["kernels"]:
            if tuple(var_list[index].shape) != tuple(shape):
                raise ValueError(
                    f"Trainable variable {index} ({var_list[index].path}) has "
                    f"shape {tuple(var_list[index].shape)}, but the saved "
                    f"wrapper pruned a kernel of shape {tuple(shape)} there. "
                    "Is this the model the optimizer was saved with?"
                )
            # Wrappers saved before EinsumDense support pruned axis -2 only.
            input_axes[id(var_list[index])] = tuple(axes[0]) if axes else (len(shape) - 2,)
        return input_axes

    @property
    def masks(self):
        """The 2:4 mask variables, one per pruned kernel (after `build`)."""
        return list(self._masks.values()) if self.built else []

    @property
    def variables(self):
        return compat.optimizer_own_variables(self) + self.inner_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        if trainable_variables is None:
            trainable_variables = compat.optimizer_trainable_variables(self)
        trainable_variables = list(trainable_variables)
        keys = [compat.optimizer_variable_key(self, v) for v in trainable_variables]
        pairs = [
            (variable, self._masks[key], self._mask_axes[key])
            for variable, key in zip(trainable_variables, keys)
            if key in self._masks
        ]

        def compute_masks():
            for variable, mask, input_axes in pairs:
                mask.assign(masks.mask_2to4(variable, input_axes))
            return tf.constant(True)

        if pairs:
            tf.cond(
                tf.equal(self.iterations, 0),
                compute_masks,
                lambda: tf.constant(False),
            )
        masked_grads = [
            _mask_gradient(grad, self._masks.get(key)) for grad, key in zip(grads, keys)
        ]
        self.inner_optimizer.apply(masked_grads, trainable_variables)
        for variable, mask, _ in pairs:
            variable.assign(variable * mask)

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        raise NotImplementedError("AspOptimizerWrapperV2 supports the TensorFlow backend only.")

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
        self.inner_optimizer.finalize_variable_values(var_list)

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            "padding": self.padding,
            "search_device": self.search_device,
            "search_time_limit": self.search_time_limit,
            "masked_variables": self.masked_variables,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        inner = keras.saving.deserialize_keras_object(
            config.pop("inner_optimizer"), custom_objects=custom_objects
        )
        # The saved weights are already permuted: never permute again.
        return cls(inner, model=None, permute=False, **config)


@keras.saving.register_keras_serializable(package="tf_asp")
class AspOptimizerWrapper(AspOptimizerWrapperV2):
    """Deprecated: use `AspOptimizerWrapperV2`. Prunes without permuting."""

    def __init__(self, optimizer, model, padding=False, name=None, **kwargs):
        warnings.warn(
            "tf_asp.AspOptimizerWrapper is deprecated and does not permute "
            "channels; use tf_asp.AspOptimizerWrapperV2 instead.",
            DeprecationWarning,
            stacklevel=2,
        )
        kwargs["permute"] = False
        super().__init__(optimizer, model, padding=padding, name=name, **kwargs)


def _mask_gradient(grad, mask):
    if grad is None or mask is None:
        return grad
    return tf.convert_to_tensor(grad) * tf.cast(mask, grad.dtype)


def _check_optimizer(optimizer):
    if isinstance(optimizer, AspOptimizerWrapperV2):
        raise ValueError(
            "This optimizer is already an AspOptimizerWrapperV2; wrap the plain optimizer once."
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        module = type(optimizer).__module__
        if module.startswith("tf_keras") or ".legacy" in module:
            raise TypeError(
                f"{type(optimizer).__name__} from `{module}` is a Keras 2 "
                "(tf_keras / legacy) optimizer. tf_asp wraps Keras 3 "
                "optimizers (keras.optimizers.*); Keras 2 support is a "
                "separate feature that is not available yet."
            )
        raise TypeError(
            "AspOptimizerWrapperV2 wraps a keras.optimizers.Optimizer; got "
            f"{type(optimizer).__name__}."
        )
    if compat.is_wrapped(optimizer):
        raise ValueError(
            f"Optimizer '{optimizer.name}' is already wrapped by an "
            "AspOptimizerWrapperV2. Create a new optimizer for each wrapper."
        )


def _check_model(model):
    if not isinstance(model, keras.Model):
        raise TypeError(
            "AspOptimizerWrapperV2 needs a keras.Model (Keras 3) to prune; "
            f"got {type(model).__name__}."
        )
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so its kernels do not exist "
            "yet. Build it first: give it an Input, call model.build("
            "input_shape), or call it once on a batch."
        )


def _prunable_kernels(model, padding):
    """Maps a readable name to each `GemmKernel` that will be pruned, in order.

    Logs at INFO every GEMM layer that stays dense, and why.
    """
    kernels, dense = {}, []
    for gemm in registry.gemm_layers(model):
        for kernel in gemm.prunable_kernels(padding):
            if all(kernel.variable is not k.variable for k in kernels.values()):
                # Layer names repeat (the query of every MultiHeadAttention),
                # variable paths do not.
                kernels[f"{kernel.variable.path} {kernel.shape}"] = kernel
        reason = gemm.unprunable_reason(padding)
        if reason is not None:
            dense.append(f"{gemm.name} ({reason})")
    if dense:
        logger.info("%d GEMM layers stay dense: %s", len(dense), "; ".join(dense))
    return kernels


def _positions(trainable_variables, kernels):
    """Where each kernel stands in the model's trainable variables."""
    axes = {id(k.variable): list(k.input_axes) for k in kernels.values()}
    return {
        "trainable_variable_count": len(trainable_variables),
        "kernels": [
            [index, list(variable.shape), axes[id(variable)]]
            for index, variable in enumerate(trainable_variables)
            if id(variable) in axes
        ],
    }


def _check_finite(kernels):
    """Raises before anything is written if a kernel holds NaN or Inf."""
    with tf.init_scope():
        for name, kernel in kernels.items():
            if not np.all(np.isfinite(kernel.numpy())):
                raise ValueError(
                    f"Kernel {name} contains NaN or Inf values, so no 2:4 "
                    "mask can be computed for it. Nothing was changed; fix "
                    "or reload the weights before wrapping the optimizer."
                )
