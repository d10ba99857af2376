"""What every tf_asp optimizer wrapper does, whichever Keras it serves.

A wrapper (`tf_asp.optimizer` for Keras 3, `tf_asp.keras2` for tf_keras) is
a thin layer over two steps:

- **prepare**, once, at construction: pick the kernels to prune (the
  registry), check their values, read activation norms from calibration
  data (`criterion="activation"`), permute channels, log what stays dense;
- **step**, every optimizer step: compute the masks at the first step
  (N:M or transposable, from magnitudes or activation-aware scores), mask
  the gradients, let the wrapped optimizer update, mask the kernels.

`tf_asp.prune_model` runs prepare and masks once, without an optimizer.

```python
plan = prepare(model, PruningOptions(padding=True, pattern="2:4"))
plan.kernels          # {"dense_1 (64, 32)": GemmKernel, ...}
plan.specs            # {id(kernel): MaskSpec}: axes, pattern, transposable
plan.summary          # the PermutationSummary (None without permutation)

# in the wrapper's build(var_list), and every step:
masks = build_masks(var_list, plan.specs, key, add_mask)
masked_update(iterations, masks, key, grads, variables, inner_update)
```
"""

import collections
import dataclasses
import warnings

import numpy as np
import tensorflow as tf

from tf_asp import compat
from tf_asp import masks
from tf_asp import registry
from tf_asp import transposable as two_d
from tf_asp.graph import permute_model
from tf_asp.graph.plot import check_plot_path
from tf_asp.log import logger
from tf_asp.patterns import parse_pattern
from tf_asp.search import check_device
from tf_asp.search import check_time_limit

# How a weight is scored for its mask: its magnitude, or its magnitude times
# its input channel's activation norm over calibration data; or, for
# `prune_model` only, a 2:4 pattern per group trained on data (`tf_asp.learned`).
CRITERIA = ("magnitude", "activation", "learned")

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
    """The arguments that decide what is pruned, to which masks, and how it
    is permuted (the wrappers' and `prune_model`'s).

    See `AspOptimizerWrapperV2` for each one's meaning. `pattern` is stored
    as a `Pattern`, `transposable` as None, `"best"` or `"greedy"`.
    `one_shot` is True for `prune_model`, the only user of
    `criterion="learned"`.
    """

    padding: bool = False
    permute: bool = True
    input_shapes: object = None
    search_device: str = "auto"
    search_time_limit: object = 60
    plot_to_file: object = None
    verify_permutation: bool = True
    verify_inputs: object = None
    pattern: object = "2:4"
    transposable: object = False
    criterion: str = "magnitude"
    one_shot: bool = False

    def __post_init__(self):
        object.__setattr__(self, "padding", bool(self.padding))
        object.__setattr__(self, "pattern", parse_pattern(self.pattern))
        object.__setattr__(self, "transposable", two_d.check_method(self.transposable))
        masks.check_transposable_pattern(self.transposable, self.pattern)
        if self.criterion not in CRITERIA:
            raise ValueError(
                f"criterion={self.criterion!r}: use 'magnitude' (|w|) or 'activation' "
                "(|w| times the input channel's activation norm over calibration_data), "
                "or 'learned' with tf_asp.prune_model."
            )
        if self.criterion == "learned":
            check_learnable(self)
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
    """The kernels a wrapper prunes, how, and what permutation did.

    Attributes:
        kernels: a readable name -> `GemmKernel`, in layer order.
        specs: a name -> `MaskSpec` (axes, pattern, transposable), same order.
        summary: the `PermutationSummary`, or None without permutation.
        norms: a name -> activation norm of each input channel (in the
            permuted order), or None for the magnitude criterion.
    """

    kernels: dict
    specs: dict
    summary: object = None
    norms: dict = None

    @property
    def specs_by_id(self):
        """id(kernel variable) -> its `MaskSpec`: what a wrapper masks."""
        return {id(self.kernels[name].variable): spec for name, spec in self.specs.items()}

    @property
    def norms_by_id(self):
        """id(kernel variable) -> its channel norms (None without them)."""
        if self.norms is None:
            return None
        return {id(self.kernels[name].variable): norm for name, norm in self.norms.items()}


def prepare(model, options, calibration_data=None, stacklevel=3):
    """Picks, checks and permutes the kernels of `model`; returns a `PruningPlan`.

    With `criterion="activation"` the input channels' activation norms are
    read from `calibration_data` first (`tf_asp.calibration`), the
    permutation search weighs every weight by them, and they are read again
    if channels moved. Nothing is written unless every check passes; a
    failed permutation restores the original weights (see `permute_model`).
    `stacklevel` points the warning for a model with nothing to prune at
    the user's line.
    """
    if calibration_data is not None and options.criterion != "activation":
        raise ValueError(
            f"calibration_data is read only with criterion='activation' or 'learned' (got "
            f"criterion={options.criterion!r}); pass both, or neither."
        )
    kernels = prunable_kernels(model, options.padding)
    check_finite({name: kernel.variable for name, kernel in kernels.items()})
    specs = mask_specs(kernels, options)
    probe = norms = None
    if options.criterion == "activation":
        from tf_asp.calibration import ActivationProbe

        probe = ActivationProbe(model, kernels, calibration_data, options.input_shapes)
        norms = probe.channel_norms()
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
            pattern=options.pattern,
            input_scales=None
            if norms is None
            else {id(kernels[name].variable): norm for name, norm in norms.items()},
        )
        if probe is not None and summary.groups:
            norms = probe.channel_norms()  # in the permuted channel order
    if not kernels:
        warnings.warn(
            f"Model '{model.name}' has no prunable GEMM layer (input size a multiple of 16, "
            "output size a multiple of 8); it will be trained densely. "
            "tf_asp.set_verbosity('INFO') tells why for each layer.",
            stacklevel=stacklevel,
        )
    logger.info(
        "Will prune %d kernels to %s%s (%s): %s",
        len(kernels),
        options.pattern,
        f" transposable ({options.transposable})" if options.transposable else "",
        options.criterion,
        ", ".join(kernels),
    )
    return PruningPlan(kernels, specs, summary, norms)


def mask_specs(kernels, options):
    """`{name: MaskSpec}` of `kernels` under `options`; a ValueError naming a
    kernel that transposable masks cannot serve (channels not multiples of 4)."""
    specs = {}
    for name, kernel in kernels.items():
        spec = masks.MaskSpec(
            kernel.input_axes, kernel.output_axes, options.pattern, options.transposable
        )
        if spec.transposable and (kernel.input_size % 4 or kernel.output_size % 4):
            raise ValueError(
                f"Kernel {name} has {kernel.input_size} input and {kernel.output_size} output "
                "channels; transposable masks need multiples of 4 (4x4 blocks). Nothing was "
                "changed; use padding=False or transposable=False."
            )
        if options.criterion == "learned" and kernel.input_size % 4:
            raise ValueError(
                f"Kernel {name} has {kernel.input_size} input channels; learned masks choose "
                "among the six 2:4 patterns of whole groups of 4. Nothing was changed; use "
                "padding=False or another criterion."
            )
        specs[name] = spec
    return specs


def check_learnable(options):
    """Raises a ValueError when `criterion="learned"` cannot serve `options`."""
    if not options.one_shot:
        raise ValueError(
            "criterion='learned' trains the masks once, with tf_asp.prune_model(model, "
            "criterion='learned', calibration_data=...); then build the wrapper with "
            "permute=False (and the default criterion) to keep exactly those zeros."
        )
    if options.pattern != parse_pattern("2:4") or options.transposable:
        raise ValueError(
            f"criterion='learned' learns 1-D 2:4 masks (one of the six 2:4 patterns per group "
            f"of 4 input channels); got pattern {options.pattern}"
            f"{' transposable' if options.transposable else ''}. Use pattern='2:4' and "
            "transposable=False, or criterion='magnitude' / 'activation'."
        )


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


@dataclasses.dataclass(frozen=True)
class WrapperStart:
    """What a wrapper's constructor settles, whichever Keras it serves.

    Attributes:
        summary: the `PermutationSummary`, or None (no permutation, or a
            wrapper restored from its config).
        specs: id(kernel) -> `MaskSpec`; None for a restored wrapper, which
            learns them in `build` (`restored_specs`).
        norms: id(kernel) -> activation norms, or None.
        masked_variables: the pruned kernels' positions (`kernel_positions`),
            what the wrapper's config saves.
    """

    summary: object
    specs: object
    norms: object
    masked_variables: dict


def start_wrapper(model, options, calibration_data, extra_arguments, check_model):
    """Prepares `model` for a wrapper (`prepare`), or takes the kernel
    positions of a wrapper restored with `model=None` from its config.

    `extra_arguments` are the wrapper's `**kwargs`: only `masked_variables`
    (from `from_config`) is allowed there. `check_model(model)` raises if
    the wrapper cannot prune `model`.
    """
    masked_variables = extra_arguments.pop("masked_variables", None)
    if extra_arguments:
        raise TypeError(
            f"AspOptimizerWrapperV2 got unexpected arguments: {sorted(extra_arguments)}. "
            "Set optimizer options such as learning_rate or weight_decay on the wrapped "
            "optimizer."
        )
    if model is None:
        if masked_variables is None:
            raise TypeError("AspOptimizerWrapperV2 needs the `model` to prune.")
        return WrapperStart(None, None, None, dict(masked_variables))
    check_model(model)
    plan = prepare(model, options, calibration_data, stacklevel=4)  # the user, past __init__
    positions = kernel_positions(model.trainable_variables, plan)
    return WrapperStart(plan.summary, plan.specs_by_id, plan.norms_by_id, positions)


def saved_options(options, masked_variables):
    """The part of a wrapper's config that says how it prunes, and what."""
    return {
        "padding": options.padding,
        "search_device": options.search_device,
        "search_time_limit": options.search_time_limit,
        "pattern": str(options.pattern),
        "transposable": options.transposable,
        "criterion": options.criterion,
        "masked_variables": dict(masked_variables),
    }


def kernel_positions(trainable_variables, plan):
    """Where each pruned kernel stands among the model's trainable variables,
    and its input and output axes.

    Saved in a wrapper's config: variable paths change when a model is
    reloaded, positions do not.
    """
    specs = plan.specs_by_id
    return {
        "trainable_variable_count": len(trainable_variables),
        "kernels": [
            [
                index,
                list(variable.shape),
                list(specs[id(variable)].input_axes),
                list(specs[id(variable)].output_axes),
            ]
            for index, variable in enumerate(trainable_variables)
            if id(variable) in specs
        ],
    }


def restored_specs(var_list, positions, wrapper_name, options):
    """id(kernel) -> `MaskSpec`, from `kernel_positions`, the variables a
    restored wrapper is built on and its options (pattern, transposable);
    a ValueError if they do not match."""
    count = positions["trainable_variable_count"]
    if len(var_list) != count:
        raise ValueError(
            f"This restored {wrapper_name} prunes a model with {count} trainable variables "
            f"but is being built on {len(var_list)}. Build it on model.trainable_variables "
            "of the model it was saved with."
        )
    specs = {}
    for index, shape, *axes in positions["kernels"]:
        variable = var_list[index]
        if tuple(variable.shape) != tuple(shape):
            raise ValueError(
                f"Trainable variable {index} ({variable.name}) has shape "
                f"{tuple(variable.shape)}, but the saved wrapper pruned a kernel of shape "
                f"{tuple(shape)} there. Is this the model the optimizer was saved with?"
            )
        # Wrappers saved before EinsumDense support pruned axis -2 only, and
        # before transposable masks saved no output axes.
        inputs = tuple(axes[0]) if axes else (len(shape) - 2,)
        outputs = tuple(axes[1]) if len(axes) > 1 else (len(shape) - 1,)
        specs[id(variable)] = masks.MaskSpec(inputs, outputs, options.pattern, options.transposable)
    return specs


# What a wrapper keeps for each pruned kernel: its mask variable, its
# `MaskSpec`, and the variable of its input channels' activation norms (None
# for the magnitude criterion).
MaskedKernel = collections.namedtuple("MaskedKernel", "mask spec scale")


def kernel_scores(kernel, spec, scale=None):
    """What a kernel's mask keeps the largest of: `|kernel|`, times each
    input channel's `scale` (flattened input axes) when there is one."""
    kernel = tf.convert_to_tensor(kernel)
    if scale is None:
        return tf.abs(kernel)
    rank = kernel.shape.rank
    inputs = sorted(a % rank for a in spec.input_axes)
    shape = [int(kernel.shape[a]) if a in inputs else 1 for a in range(rank)]
    # Input axes are flattened row-major, which is the order they keep here.
    scale = tf.reshape(tf.cast(scale, kernel.dtype), shape)
    return tf.abs(kernel) * scale


def compute_masks_once(iterations, masked):
    """At the first step (`iterations == 0`), sets every mask from its kernel.

    `masked` is a list of `(kernel variable, MaskedKernel)`.
    """
    if not masked:
        return

    def compute():
        for variable, entry in masked:
            scores = kernel_scores(variable, entry.spec, entry.scale)
            entry.mask.assign(tf.cast(entry.spec.mask(scores), entry.mask.dtype))
        return tf.constant(True)

    tf.cond(tf.equal(iterations, 0), compute, lambda: tf.constant(False))


def mask_gradient(grad, mask):
    """The gradient with the pruned weights' entries zeroed (None stays None)."""
    if grad is None or mask is None:
        return grad
    return tf.convert_to_tensor(grad) * tf.cast(mask, grad.dtype)


def apply_masks(masked):
    """Zeroes the pruned weights again after the wrapped optimizer's update."""
    for variable, entry in masked:
        variable.assign(variable * entry.mask)


def build_masks(var_list, specs, key, add_mask, add_scale=None, norms=None):
    """Creates the mask (and activation-norm) variables of every pruned kernel
    among `var_list`.

    Args:
        var_list: the variables the wrapper is built on.
        specs: id(kernel) -> its `MaskSpec` (`PruningPlan.specs_by_id`).
        key: the optimizer's key for a variable (it files masks by it).
        add_mask: creates a wrapper variable of ones shaped like a kernel.
        add_scale: for the activation criterion, creates a wrapper variable
            `(kernel, initial values)` of one norm per input channel; None
            for the magnitude criterion.
        norms: id(kernel) -> its channel norms (`PruningPlan.norms_by_id`);
            a restored wrapper starts from ones, which its checkpoint
            overwrites.

    Returns:
        `{key(kernel): MaskedKernel}`.
    """
    built = {}
    for variable in var_list:
        spec = specs.get(id(variable))
        if spec is None:
            continue
        check_finite({compat.variable_path(variable): variable})
        mask = add_mask(variable)
        scale = None
        if add_scale is not None:
            channels = int(np.prod([variable.shape[a] for a in spec.input_axes]))
            values = (norms or {}).get(id(variable))
            values = np.ones(channels) if values is None else values
            scale = add_scale(variable, np.asarray(values, np.float32))
        built[key(variable)] = MaskedKernel(mask, spec, scale)
    return built


def masked_kernels(built, key, variables):
    """The `(kernel, MaskedKernel)` of each pruned kernel in `variables`."""
    found = ((variable, built.get(key(variable))) for variable in variables)
    return [(variable, entry) for variable, entry in found if entry is not None]


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
    grads = [mask_gradient(g, e.mask if e else None) for g, e in zip(grads, entries)]
    result = update(grads)
    apply_masks(masked)
    return result
