"""What every tf_asp optimizer wrapper does, whichever Keras it serves.

A wrapper (`tf_asp.optimizer` for Keras 3, `tf_asp.keras2` for tf_keras) is
a thin layer over two steps:

- **prepare**, once, at construction: pick the kernels to prune (the
  registry), check their values, permute channels, log what stays dense;
- **step**, every optimizer step: compute the masks at the first step,
  mask the gradients, let the wrapped optimizer update, mask the kernels.

```python
plan = prepare(model, PruningOptions(padding=True))
plan.kernels          # {"dense_1 (64, 32)": GemmKernel, ...}
plan.summary          # the PermutationSummary (None without permutation)

# in the wrapper's build(var_list), and every step:
masks = build_masks(var_list, plan.input_axes, key, add_mask)
masked_update(iterations, masks, key, grads, variables, inner_update)
```
"""

import dataclasses
import warnings

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

# The Keras each top-level package name stands for, for messages.
KERAS_NAMES = {"keras": "Keras 3", "tf_keras": "Keras 2 (tf_keras)"}


def keras_of(obj):
    """`"keras"` (Keras 3), `"tf_keras"` (Keras 2) or None: whose class `obj` is.

    Decided by the modules of its classes, so neither Keras is imported:

    >>> keras_of("sgd") is None
    True
    """
    for cls in type(obj).__mro__:
        root = cls.__module__.split(".")[0]
        if root in KERAS_NAMES:
            return root
    return None


def check_same_keras(optimizer, model, wrapper_name="AspOptimizerWrapperV2"):
    """Raises a TypeError naming both when they come from different Kerases."""
    optimizer_keras, model_keras = keras_of(optimizer), keras_of(model)
    if optimizer_keras and model_keras and optimizer_keras != model_keras:

        def named(obj, keras):
            cls = type(obj)
            return f"{KERAS_NAMES[keras]} {cls.__name__} (`{cls.__module__}`)"

        raise TypeError(
            f"{wrapper_name} got a {named(optimizer, optimizer_keras)} optimizer for a "
            f"{named(model, model_keras)} model. Build both with the same Keras: "
            "`keras.optimizers.*` for a `keras` model (Keras 3), or "
            "`tf_keras.optimizers.*` / `tf_keras.optimizers.legacy.*` for a `tf_keras` "
            "model (also `tf.keras.*` under TF_USE_LEGACY_KERAS=1). Nothing was changed."
        )


def check_built(model):
    """Raises a ValueError saying how to build `model` when it is not built."""
    if not model.built:
        raise ValueError(
            f"Model '{model.name}' is not built, so its kernels do not exist "
            "yet. Build it first: give it an Input, call model.build("
            "input_shape), or call it once on a batch."
        )


@dataclasses.dataclass(frozen=True)
class PruningOptions:
    """The wrapper arguments that decide what is pruned and how it is permuted.

    See `AspOptimizerWrapperV2` for each one's meaning.
    """

    padding: bool = False
    permute: bool = True
    input_shapes: object = None
    search_device: str = "auto"
    search_time_limit: object = 60
    plot_to_file: object = None
    verify_permutation: bool = True
    verify_inputs: object = None

    def __post_init__(self):
        object.__setattr__(self, "padding", bool(self.padding))
        device = check_device(self.search_device, "search_device")
        object.__setattr__(self, "search_device", device)
        check_time_limit(self.search_time_limit, "search_time_limit")
        if self.plot_to_file is not None:
            check_plot_path(self.plot_to_file, "plot_to_file")
            if not self.permute:
                raise ValueError(
                    "plot_to_file draws the permutation of the op graph; it needs permute=True."
                )


@dataclasses.dataclass(frozen=True)
class PruningPlan:
    """The kernels a wrapper prunes and what permutation did.

    Attributes:
        kernels: a readable name -> `GemmKernel`, in layer order.
        summary: the `PermutationSummary`, or None without permutation.
    """

    kernels: dict
    summary: object = None

    @property
    def input_axes(self):
        """id(kernel variable) -> its input axes: what a wrapper masks."""
        return {id(k.variable): k.input_axes for k in self.kernels.values()}


def prepare(model, options):
    """Picks, checks and permutes the kernels of `model`; returns a `PruningPlan`.

    Nothing is written unless every check passes; a failed permutation
    restores the original weights (see `permute_model`).
    """
    kernels = prunable_kernels(model, options.padding)
    check_finite({name: kernel.variable for name, kernel in kernels.items()})
    summary = None
    if options.permute:
        summary = permute_model(
            model,
            input_shapes=options.input_shapes,
            padding=options.padding,
            search_device=options.search_device,
            search_time_limit=options.search_time_limit,
            plot_to_file=options.plot_to_file,
            verify=options.verify_permutation,
            verify_inputs=options.verify_inputs,
        )
    if not kernels:
        warnings.warn(
            f"Model '{model.name}' has no prunable GEMM layer (input size a multiple of 16, "
            "output size a multiple of 8); it will be trained densely. "
            "tf_asp.set_verbosity('INFO') tells why for each layer.",
            stacklevel=3,
        )
    logger.info(
        "Will prune %d kernels to 2:4 at the first step: %s", len(kernels), ", ".join(kernels)
    )
    return PruningPlan(kernels, summary)


def prunable_kernels(model, padding=False):
    """Maps a readable name to each `GemmKernel` that will be pruned, in order.

    Logs at INFO every GEMM layer that stays dense, and why.
    """
    kernels, dense = {}, []
    for gemm in registry.gemm_layers(model):
        for kernel in gemm.prunable_kernels(padding):
            if all(kernel.variable is not k.variable for k in kernels.values()):
                # Layer names repeat (the query of every MultiHeadAttention),
                # variable paths do not.
                kernels[f"{compat.variable_path(kernel.variable)} {kernel.shape}"] = kernel
        reason = gemm.unprunable_reason(padding)
        if reason is not None:
            dense.append(f"{gemm.name} ({reason})")
    if dense:
        logger.info("%d GEMM layers stay dense: %s", len(dense), "; ".join(dense))
    return kernels


def check_finite(kernels):
    """Raises before anything is written if a kernel holds NaN or Inf."""
    with tf.init_scope():
        for name, kernel in kernels.items():
            if not np.all(np.isfinite(kernel.numpy())):
                raise ValueError(
                    f"Kernel {name} contains NaN or Inf values, so no 2:4 "
                    "mask can be computed for it. Nothing was changed; fix "
                    "or reload the weights before wrapping the optimizer."
                )


def kernel_positions(trainable_variables, plan):
    """Where each pruned kernel stands among the model's trainable variables.

    Saved in a wrapper's config: variable paths change when a model is
    reloaded, positions do not.
    """
    axes = {key: list(value) for key, value in plan.input_axes.items()}
    return {
        "trainable_variable_count": len(trainable_variables),
        "kernels": [
            [index, list(variable.shape), axes[id(variable)]]
            for index, variable in enumerate(trainable_variables)
            if id(variable) in axes
        ],
    }


def restored_input_axes(var_list, positions, wrapper_name):
    """id(kernel) -> input axes, from `kernel_positions` and the variables a
    restored wrapper is built on; a ValueError if they do not match."""
    count = positions["trainable_variable_count"]
    if len(var_list) != count:
        raise ValueError(
            f"This restored {wrapper_name} prunes a model with {count} trainable variables "
            f"but is being built on {len(var_list)}. Build it on model.trainable_variables "
            "of the model it was saved with."
        )
    input_axes = {}
    for index, shape, *axes in positions["kernels"]:
        variable = var_list[index]
        if tuple(variable.shape) != tuple(shape):
            raise ValueError(
                f"Trainable variable {index} ({variable.name}) has shape "
                f"{tuple(variable.shape)}, but the saved wrapper pruned a kernel of shape "
                f"{tuple(shape)} there. Is this the model the optimizer was saved with?"
            )
        # Wrappers saved before EinsumDense support pruned axis -2 only.
        input_axes[id(variable)] = tuple(axes[0]) if axes else (len(shape) - 2,)
    return input_axes


def compute_masks_once(iterations, masked):
    """At the first step (`iterations == 0`), sets every mask from its kernel.

    `masked` is a list of `(kernel variable, mask variable, input axes)`.
    """
    if not masked:
        return

    def compute():
        for variable, mask, input_axes in masked:
            mask.assign(masks.mask_2to4(variable, input_axes))
        return tf.constant(True)

    tf.cond(tf.equal(iterations, 0), compute, lambda: tf.constant(False))


def mask_gradient(grad, mask):
    """The gradient with the pruned weights' entries zeroed (None stays None)."""
    if grad is None or mask is None:
        return grad
    return tf.convert_to_tensor(grad) * tf.cast(mask, grad.dtype)


def apply_masks(masked):
    """Zeroes the pruned weights again after the wrapped optimizer's update."""
    for variable, mask, _ in masked:
        variable.assign(variable * mask)


def build_masks(var_list, input_axes, key, add_mask):
    """Creates the mask of every pruned kernel among `var_list`.

    Args:
        var_list: the variables the wrapper is built on.
        input_axes: id(kernel) -> its input axes (`PruningPlan.input_axes`).
        key: the optimizer's key for a variable (it files masks by it).
        add_mask: creates a wrapper variable of ones shaped like a kernel.

    Returns:
        `{key(kernel): (mask variable, input axes)}`.
    """
    built = {}
    for variable in var_list:
        axes = input_axes.get(id(variable))
        if axes is not None:
            check_finite({compat.variable_path(variable): variable})
            built[key(variable)] = (add_mask(variable), axes)
    return built


def masked_kernels(built, key, variables):
    """The `(kernel, mask, input axes)` of each pruned kernel in `variables`."""
    found = ((variable, built.get(key(variable))) for variable in variables)
    return [(variable, *entry) for variable, entry in found if entry is not None]


def masked_update(iterations, built, key, grads, variables, update):
    """One step of a wrapper: masks, masked gradients, update, masked kernels.

    Args:
        iterations: the wrapped optimizer's step counter (masks are
            computed when it is 0).
        built: what `build_masks` returned.
        key: the optimizer's key for a variable.
        grads, variables: the step's gradients and their variables.
        update: runs the wrapped optimizer on a list of gradients for
            `variables`; its result is returned.
    """
    masked = masked_kernels(built, key, variables)
    compute_masks_once(iterations, masked)
    entries = [built.get(key(variable)) for variable in variables]
    grads = [mask_gradient(g, e[0] if e else None) for g, e in zip(grads, entries)]
    result = update(grads)
    apply_masks(masked)
    return result
