"""`prune_model`: permute and prune a trained model once, with no optimizer.

The way to sparsify a trained model for inference, to compare masks, or to
prune before fine-tuning with a wrapper built afterwards with
`permute=False` (its first-step masks keep exactly these zeros when it uses
the same `pattern` and `transposable`).

```python
summary = tf_asp.prune_model(model, pattern="2:4", criterion="activation",
                             calibration_data=x_train[:256])
print(summary)                 # one row per kernel: pattern, criterion, kept
summary.permutation            # the PermutationSummary (None with permute=False)
```
"""

import dataclasses
import inspect
import time

import numpy as np
import tensorflow as tf

from tf_asp import learned
from tf_asp import masks
from tf_asp import pruning


@dataclasses.dataclass(frozen=True)
class KernelPruning:
    """What the mask of one kernel kept.

    Attributes:
        name: the kernel's variable path and shape.
        pattern: the N:M pattern, e.g. `"2:4"`.
        transposable: None, `"best"` or `"greedy"`.
        criterion: `"magnitude"`, `"activation"` or `"learned"`.
        kept: the sum of the criterion's scores the mask keeps: magnitudes
            (`|w|`, also for learned masks), or `|w| * ||x_c||` for the
            activation criterion.
        total: the sum of all the scores.
        kept_1d: what the 1-D mask of the same pattern would keep (equal to
            `kept` unless transposable): the price of transposability.
    """

    name: str
    pattern: str
    transposable: str
    criterion: str
    kept: float
    total: float
    kept_1d: float

    @property
    def kept_fraction(self):
        """The share of the total score the mask keeps."""
        return self.kept / self.total if self.total else 1.0


@dataclasses.dataclass(frozen=True)
class PruningSummary:
    """What `prune_model` did: one `KernelPruning` per pruned kernel, the
    permutation's summary (None without permutation), and with
    `criterion="learned"` the training's `tf_asp.learned.LearnedMasks`
    (`loss`, `magnitude_loss`: the loss of the learned and of the magnitude
    masks over the calibration data), else None.

    `str(summary)` is a table of the kernels, then the permutation summary.
    """

    kernels: tuple
    permutation: object
    duration: float
    learned: object = None

    def __str__(self):
        two_d = any(k.transposable for k in self.kernels)
        header = ("kernel", "pattern", "criterion", "kept") + (("1-D would keep",) if two_d else ())
        rows = [
            (
                k.name,
                k.pattern + (f" transposable ({k.transposable})" if k.transposable else ""),
                k.criterion,
                f"{k.kept_fraction:.1%}",
            )
            + ((f"{k.kept_1d / k.total if k.total else 1.0:.1%}",) if two_d else ())
            for k in self.kernels
        ]
        widths = [max(len(cells[i]) for cells in [header] + rows) for i in range(len(header))]
        lines = [f"Pruned {len(self.kernels)} kernels in {self.duration:.1f} s"]
        if self.learned is not None:
            lines.append(
                f"Learned masks ({self.learned.steps} steps, kept step "
                f"{self.learned.best_step}): loss {self.learned.loss:.6g}, "
                f"magnitude masks {self.learned.magnitude_loss:.6g}"
            )
        for cells in [header] + rows:
            lines.append("  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip())
        if self.permutation is not None:
            lines.append(str(self.permutation))
        return "\n".join(lines)


def prune_model(
    model,
    pattern="2:4",
    permute=True,
    criterion="magnitude",
    calibration_data=None,
    transposable=False,
    *,
    padding=False,
    input_shapes=None,
    search_device="auto",
    search_time_limit=60,
    plot_to_file=None,
    verify_permutation=True,
    verify_inputs=None,
    loss=None,
    learned_steps=100,
    learning_rate=0.1,
    temperature=(1.0, 0.1),
    learned_sampling="hard",
    seed=0,
):
    """Permutes channels and prunes every eligible kernel of `model` in place.

    The same kernels as `AspOptimizerWrapperV2` prunes (`tf_asp.registry`;
    input size a multiple of 16, output size of 8, whatever the pattern),
    permuted the same way for the same pattern and scores, masked once.
    Every argument is checked, and activation norms are read, before any
    weight changes.

    Args:
        model: a built Keras 3 or tf_keras model.
        pattern: `"2:4"` (default), `"1:2"` (TF32), or N:M with M in 4, 8, 16.
        permute: search and apply channel permutations first.
        criterion: `"magnitude"`, `"activation"` (|w| times the input
            channel's activation norm over `calibration_data`), or
            `"learned"`: one of the six 2:4 patterns per group of 4 input
            channels, trained on `calibration_data` (`tf_asp.learned`;
            Keras 3 models, pattern 2:4, not transposable). Learning starts
            from the magnitude masks, after the permutation, and changes
            only the masks: the kept weights keep their values.
        calibration_data: for `criterion="activation"` or `"learned"`: a
            `tf.data.Dataset` of batches of model inputs (or `(inputs,
            targets)`), or an array (a list or dict of arrays) of a few
            hundred samples; with `loss=`, `(inputs, targets)` batches or a
            tuple `(inputs, targets)` of arrays.
        transposable: False, True or `"best"` (exact), or `"greedy"`:
            transposable 2:4 masks (2:4 only).
        padding, input_shapes, search_device, search_time_limit,
        plot_to_file, verify_permutation, verify_inputs: as for
            `AspOptimizerWrapperV2`.
        loss: for `criterion="learned"`: None (default) distils from the
            dense model (mean squared error to its outputs; no labels
            needed), or a Keras loss on `(inputs, targets)` data.
        learned_steps, learning_rate, temperature, learned_sampling, seed:
            for `criterion="learned"`: training steps (one batch each),
            Adam's learning rate on the logits, the Gumbel-softmax
            temperature `(start, end)`, `"hard"` (straight-through) or
            `"soft"` samples, the noise seed (`tf_asp.learned.LearnedOptions`).

    Returns:
        A `PruningSummary`.

    Example:

    ```python
    summary = tf_asp.prune_model(model, pattern="1:2")
    tf_asp.check_pruned_layers(model, check_structured=True, pattern="1:2")
    summary = tf_asp.prune_model(model, criterion="learned", calibration_data=x[:512],
                                 learned_steps=200)
    summary.learned.loss, summary.learned.magnitude_loss
    ```
    """
    start = time.perf_counter()
    if pruning.keras_of(model) is None or not hasattr(model, "layers"):
        raise TypeError(
            f"prune_model needs a Keras 3 or tf_keras model; got {type(model).__name__}."
        )
    pruning.check_built(model)
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
        one_shot=True,
    )
    if criterion != "learned":
        _check_no_learned_arguments(
            criterion,
            loss=loss,
            learned_steps=learned_steps,
            learning_rate=learning_rate,
            temperature=temperature,
            learned_sampling=learned_sampling,
            seed=seed,
        )
        plan = pruning.prepare(model, options, calibration_data)
        return _write_masks(plan, options, start)
    learning = learned.LearnedOptions(
        learned_steps, learning_rate, temperature, learned_sampling, seed, loss
    )
    learned.check_model(model)
    pruning.mask_specs(pruning.prunable_kernels(model, padding), options)  # raises early
    batches = learned.training_batches(model, calibration_data, loss, input_shapes)
    saved = [variable.numpy() for variable in model.weights]
    try:
        plan = pruning.prepare(model, options)
        result = learned.learn_masks(model, plan.kernels, batches, learning)
        return _write_masks(plan, options, start, result)
    except BaseException:
        for variable, value in zip(model.weights, saved):  # permuted, or half-written
            variable.assign(value)
        raise


def _check_no_learned_arguments(criterion, **arguments):
    """A ValueError for learned-mask arguments given with another criterion,
    which would otherwise be ignored without a word."""
    defaults = inspect.signature(prune_model).parameters
    given = sorted(name for name, value in arguments.items() if value != defaults[name].default)
    if given:
        raise ValueError(
            f"{', '.join(given)} only apply to criterion='learned' (got "
            f"criterion={criterion!r}). Nothing was changed; drop them or use "
            "criterion='learned'."
        )


def _write_masks(plan, options, start, learned_masks=None):
    """Masks every kernel of `plan` (from its scores, or `learned_masks`) and
    returns the `PruningSummary`."""
    results, values = [], []
    for name, kernel in plan.kernels.items():
        spec = plan.specs[name]
        value = kernel.variable.numpy()
        scores = pruning.kernel_scores(
            value, spec, None if plan.norms is None else plan.norms[name]
        )
        if learned_masks is None:
            mask = spec.mask(scores).numpy().astype(value.dtype)
        else:
            mask = learned_masks.masks[name].astype(value.dtype)
        scores = scores.numpy().astype(np.float64)
        kept_1d = None
        if spec.transposable:
            kept_1d = float(np.sum(scores * masks.nm_mask(scores, spec.input_axes).numpy()))
        kept = float(np.sum(scores * mask))
        results.append(
            KernelPruning(
                name,
                str(spec.pattern),
                spec.transposable,
                options.criterion,
                kept,
                float(scores.sum()),
                kept if kept_1d is None else kept_1d,
            )
        )
        values.append((kernel.variable, value * mask))
    for variable, value in values:  # every mask first, then the writes
        variable.assign(tf.cast(value, variable.dtype))
    return PruningSummary(tuple(results), plan.summary, time.perf_counter() - start, learned_masks)
