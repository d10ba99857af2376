"""`AspOptimizerWrapperV2`: a Keras optimizer that keeps a model 2:4 sparse.

This is the Keras 3 wrapper; given a tf_keras (Keras 2) optimizer or model,
`AspOptimizerWrapperV2(...)` builds its tf_keras twin (`tf_asp.keras2`) instead.
"""

import warnings

import keras

from tf_asp import compat
from tf_asp import distribute
from tf_asp import pruning

V1_DEPRECATED = (
    "tf_asp.AspOptimizerWrapper is deprecated and does not permute "
    "channels; use tf_asp.AspOptimizerWrapperV2 instead."
)


@keras.saving.register_keras_serializable(package="tf_asp")
class AspOptimizerWrapperV2(keras.optimizers.Optimizer):
    """Wraps a Keras optimizer so that fine-tuning yields a 2:4 sparse model.

    At construction the wrapper finds the prunable kernels of `model` (every
    GEMM kernel `tf_asp.registry` supports, Dense, EinsumDense and
    convolutions, whose input size is a multiple of 16 and output size a
    multiple of 8) and, with `permute=True`, permutes channels so that 2:4
    pruning keeps as much weight magnitude as possible while the model still
    computes the same function. Nothing is pruned yet.

    At the first optimizer step (iteration 0) it computes a mask for every
    prunable kernel from its current weights, keeping the N largest scores
    of every M input channels (2:4 by default: `pattern`; transposable 2:4
    masks with `transposable`), the score being the weight's magnitude or,
    with `criterion="activation"`, its magnitude times its input channel's
    activation norm over `calibration_data` (read at construction, before
    permuting, so that the search optimizes the same scores). The masks are
    then frozen: every
    step masks the gradients, lets the wrapped optimizer update, and masks
    the kernels again, so a pruned weight stays exactly 0.0 whatever the
    optimizer's slots (momentum, Adam moments) hold. The masks are optimizer
    variables, saved and restored with checkpoints and `.keras` files.

    Under `MirroredStrategy` or `MultiWorkerMirroredStrategy`, build it inside
    the `strategy.scope()` the model and `optimizer` were created in: every
    replica then permutes and masks the same weights alike, with no broadcast
    (`tf_asp.distribute` checks what it relies on).

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
        pattern: `"N:M"`, keep N of every M input channels: `"2:4"`
            (default; FP16/BF16/INT8 sparse Tensor Cores), `"1:2"` (TF32), or
            any N < M with M in 4, 8, 16 (research).
        transposable: False (1-D masks), True or `"best"` (the exact best
            transposable 2:4 mask of every 4x4 block, so the backward pass's
            transposed kernel is 2:4 too) or `"greedy"` (a faster greedy
            one). 2:4 only.
        criterion: `"magnitude"` (|w|) or `"activation"` (|w| times the
            input channel's L2 norm over `calibration_data`).
        calibration_data: for `criterion="activation"`: a `tf.data.Dataset`
            of batches of model inputs (or `(inputs, targets)`), or an array
            (a list or dict of arrays for several inputs); a few hundred
            samples (`tf_asp.calibration`).
        name: the optimizer's name.

    Example:

    ```python
    model = keras.applications.ResNet50(weights="imagenet")
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(1e-3, momentum=0.9), model)
    model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")
    model.fit(dataset, epochs=10)  # fine-tune: kernels stay 2:4
    ```

    Given a tf_keras (Keras 2) optimizer and model, it returns a
    `tf_asp.keras2.AspOptimizerWrapperV2`, which takes the same arguments.
    """

    def __new__(cls, optimizer=None, model=None, *args, **kwargs):
        # The class is picked by the Keras of the objects given, the way
        # tf_keras' LossScaleOptimizer picks its V2 or V3 implementation.
        pruning.check_same_keras(optimizer, model)
        if "tf_keras" in (pruning.keras_of(optimizer), pruning.keras_of(model)):
            from tf_asp import keras2

            return getattr(keras2, cls.__name__)(optimizer, model, *args, **kwargs)
        return super().__new__(cls)

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
        # `masked_variables` comes from `from_config` only: a restored wrapper
        # knows its pruned kernels by position among the model's trainable
        # variables (variable paths change when a model is reloaded).
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

        def check_model(model):
            _check_model(model)
            distribute.check_strategy(model, optimizer)
            distribute.check_workers_agree(model)

        start = pruning.start_wrapper(model, options, calibration_data, kwargs, check_model)
        if model is not None:
            distribute.check_workers_agree(model, permuted=True)  # even unpermuted: a collective

        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.padding = options.padding
        self.search_device = options.search_device
        self.search_time_limit = options.search_time_limit
        self.options = options
        self.permutation_summary = start.summary
        self._specs = start.specs  # id(kernel) -> its MaskSpec, once known
        self._norms = start.norms  # id(kernel) -> its input channels' activation norms
        self.masked_variables = start.masked_variables
        compat.mark_wrapped(optimizer)

    @compat.no_dependency_tracking
    def build(self, var_list):
        self.inner_optimizer.build(var_list)
        if self._specs is None:
            self._specs = pruning.restored_specs(
                var_list, self.masked_variables, type(self).__name__, self.options
            )
        self._masks = pruning.build_masks(
            var_list,
            self._specs,
            self._key,
            lambda kernel: self.add_variable_from_reference(
                kernel, name="asp_mask", initializer="ones"
            ),
            self._add_scale if self.options.criterion == "activation" else None,
            self._norms,
        )
        super().build(var_list)

    def _add_scale(self, kernel, values):
        return self.add_variable(
            shape=values.shape,
            initializer=lambda shape, dtype=None: values,
            dtype="float32",
            name="asp_channel_norms",
        )

    def _key(self, variable):
        return compat.optimizer_variable_key(self, variable)

    @property
    def masks(self):
        """The mask variables, one per pruned kernel (after `build`)."""
        return [entry.mask for entry in self._masks.values()] if self.built else []

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
        pruning.masked_update(
            self.iterations,
            self._masks,
            self._key,
            grads,
            trainable_variables,
            lambda masked_grads: self.inner_optimizer.apply(masked_grads, trainable_variables),
        )

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
        # An exponential moving average (use_ema=True) overwrites the kernels.
        self.inner_optimizer.finalize_variable_values(var_list)
        if self.built:
            pruning.apply_masks(pruning.masked_kernels(self._masks, self._key, var_list))

    def get_config(self):
        return {
            "name": self.name,
            "inner_optimizer": keras.saving.serialize_keras_object(self.inner_optimizer),
            **pruning.saved_options(self.options, self.masked_variables),
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

    def __new__(cls, *args, **kwargs):
        # Warns here, where both Kerases pass (tf_keras: `keras2.AspOptimizerWrapper`).
        warnings.warn(V1_DEPRECATED, DeprecationWarning, stacklevel=2)
        return super().__new__(cls, *args, **kwargs)

    def __init__(self, optimizer, model, padding=False, name=None, **kwargs):
        kwargs["permute"] = False
        super().__init__(optimizer, model, padding=padding, name=name, **kwargs)


def _check_optimizer(optimizer):
    if isinstance(optimizer, AspOptimizerWrapperV2):
        raise ValueError(
            "This optimizer is already an AspOptimizerWrapperV2; wrap the plain optimizer once."
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise TypeError(
            "AspOptimizerWrapperV2 wraps a keras.optimizers.Optimizer (Keras 3) or a "
            f"tf_keras optimizer (Keras 2); got {type(optimizer).__name__}."
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
    pruning.check_built(model)
