"""`AspOptimizerWrapperV2`: a Keras optimizer that keeps a model 2:4 sparse."""

import os
import warnings

import keras
import numpy as np
import tensorflow as tf
from keras.src.utils import tracking

from tf_asp import masks
from tf_asp.log import logger

SEARCH_DEVICES = ("auto", "GPU", "CPU", "numpy")
PLOT_EXTENSIONS = (".png", ".pdf", ".svg", ".dot")


@keras.saving.register_keras_serializable(package="tf_asp")
class AspOptimizerWrapperV2(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer so that fine-tuning yields a 2:4 sparse model.

    At construction the wrapper finds the prunable layers of `model` (Dense
    and Conv2D kernels whose input dim is a multiple of 16 and output dim a
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
        _check_search_options(search_device, search_time_limit, plot_to_file)
        if model is None and masked_variables is None:
            raise TypeError("AspOptimizerWrapperV2 needs the `model` to prune.")

        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.padding = bool(padding)
        self.search_device = search_device
        self.search_time_limit = search_time_limit
        self.permutation_summary = None
        self._masked_variable_ids = None

        if model is not None:
            _check_model(model)
            kernels = _prunable_kernels(model, self.padding)
            _check_finite(kernels)
            if permute:
                self.permutation_summary = _permute(
                    model,
                    input_shapes=input_shapes,
                    padding=self.padding,
                    search_device=search_device,
                    search_time_limit=search_time_limit,
                    plot_to_file=plot_to_file,
                    verify=verify_permutation,
                )
            elif plot_to_file is not None:
                raise ValueError(
                    "plot_to_file draws the permutation of the op graph; it needs permute=True."
                )
            self._masked_variable_ids = {id(k) for k in kernels.values()}
            masked_variables = _positions(model.trainable_variables, kernels)
            if not kernels:
                message = (
                    f"Model '{model.name}' has no prunable Dense or Conv2D "
                    "layer (input dim a multiple of 16, output dim a multiple "
                    "of 8); it will be trained densely. "
                    "tf_asp.set_verbosity('DEBUG') tells why for each layer."
                )
                warnings.warn(message, stacklevel=2)
            logger.info(
                "Will prune %d kernels to 2:4 at the first step: %s",
                len(kernels),
                ", ".join(kernels),
            )
        self.masked_variables = dict(masked_variables)
        # Mark the wrapped optimizer so it cannot be wrapped a second time.
        optimizer._tf_asp_wrapped = True

    @tracking.no_automatic_dependency_tracking
    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        if self._masked_variable_ids is None:
            restored = self._find_restored_kernels(var_list)
            self._masked_variable_ids = {id(kernel) for kernel in restored}
        self._masks = {}
        for variable in var_list:
            if id(variable) in self._masked_variable_ids:
                _check_finite({variable.path: variable})
                mask = self.add_variable_from_reference(
                    variable, name="asp_mask", initializer="ones"
                )
                self._masks[self._var_key(variable)] = mask
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
        kernels = []
        for index, shape in self.masked_variables["kernels"]:
            if tuple(var_list[index].shape) != tuple(shape):
                raise ValueError(
                    f"Trainable variable {index} ({var_list[index].path}) has "
                    f"shape {tuple(var_list[index].shape)}, but the saved "
                    f"wrapper pruned a kernel of shape {tuple(shape)} there. "
                    "Is this the model the optimizer was saved with?"
                )
            kernels.append(var_list[index])
        return kernels

    @property
    def masks(self):
        """The 2:4 mask variables, one per pruned kernel (after `build`)."""
        return list(self._masks.values()) if self.built else []

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

    def apply(self, grads, trainable_variables=None):
        if not self.built:
            with keras.name_scope(self.name, caller=self):
                self.build(trainable_variables)
            self.built = True
        if trainable_variables is None:
            trainable_variables = self._trainable_variables
        trainable_variables = list(trainable_variables)
        pairs = [
            (variable, self._masks.get(self._var_key(variable))) for variable in trainable_variables
        ]
        pairs = [(variable, mask) for variable, mask in pairs if mask is not None]

        def compute_masks():
            for variable, mask in pairs:
                mask.assign(masks.mask_2to4(variable))
            return tf.constant(True)

        if pairs:
            tf.cond(
                tf.equal(self.iterations, 0),
                compute_masks,
                lambda: tf.constant(False),
            )
        masked_grads = [
            _mask_gradient(grad, self._masks.get(self._var_key(variable)))
            for grad, variable in zip(grads, trainable_variables)
        ]
        self.inner_optimizer.apply(masked_grads, trainable_variables)
        for variable, mask in pairs:
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
    if getattr(optimizer, "_tf_asp_wrapped", False):
        raise ValueError(
            f"Optimizer '{optimizer.name}' is already wrapped by an "
            "AspOptimizerWrapperV2. Create a new optimizer for each wrapper."
        )


def _check_search_options(search_device, search_time_limit, plot_to_file):
    if search_device not in SEARCH_DEVICES:
        raise ValueError(f"search_device must be one of {SEARCH_DEVICES}; got {search_device!r}.")
    if search_time_limit is not None and not (
        isinstance(search_time_limit, (int, float)) and search_time_limit > 0
    ):
        raise ValueError(
            "search_time_limit must be a positive number of seconds or None; "
            f"got {search_time_limit!r}."
        )
    if plot_to_file is not None:
        extension = os.path.splitext(os.fspath(plot_to_file))[1].lower()
        if extension not in PLOT_EXTENSIONS:
            raise ValueError(
                f"plot_to_file must end with one of {PLOT_EXTENSIONS}; "
                f"got {os.fspath(plot_to_file)!r}."
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
    """Maps a readable name to each kernel that will be pruned, in order."""
    kernels = {}
    for layer in model._flatten_layers(include_self=False, recursive=True):
        kernel = masks.prunable_kernel(layer)
        reason = masks.unprunable_reason(layer, padding)
        if isinstance(layer, (keras.layers.Dense, keras.layers.Conv2D)):
            if reason is None and kernel is not None:
                if all(kernel is not k for k in kernels.values()):
                    kernels[f"{layer.name} {tuple(kernel.shape)}"] = kernel
            else:
                logger.debug("Layer '%s' stays dense: %s.", layer.name, reason)
    return kernels


def _positions(trainable_variables, kernels):
    """Where each kernel stands in the model's trainable variables."""
    ids = {id(k) for k in kernels.values()}
    return {
        "trainable_variable_count": len(trainable_variables),
        "kernels": [
            [index, list(variable.shape)]
            for index, variable in enumerate(trainable_variables)
            if id(variable) in ids
        ],
    }


def _check_finite(kernels):
    """Raises before anything is written if a kernel holds NaN or Inf."""
    with tf.init_scope():
        for name, kernel in kernels.items():
            if not np.all(np.isfinite(np.asarray(kernel))):
                raise ValueError(
                    f"Kernel {name} contains NaN or Inf values, so no 2:4 "
                    "mask can be computed for it. Nothing was changed; fix "
                    "or reload the weights before wrapping the optimizer."
                )


def _permute(model, **options):
    from tf_asp.graph import permute_model

    return permute_model(model, **options)
