"""Learned 2:4 masks: each group's pattern chosen by training on data.

A group of 4 input channels (for one output, and one tap of a convolution)
has six 2:4 patterns, C(4, 2). Instead of keeping its two largest weights,
`criterion="learned"` gives every group six logits, trains them for a few
steps on calibration data and keeps each group's best (argmax) pattern.

- **Start.** A group's logits are what each pattern keeps of `|w|`, divided
  by the kernel's mean `|w|`: their argmax is the magnitude mask, which is
  what 0 steps gives (ties as `nm_mask` breaks them).
- **Sampling.** Every step draws a pattern per group from a Gumbel-softmax
  of its logits, at a temperature annealed geometrically from `temperature[0]`
  to `temperature[1]`: `"hard"` (default) uses the drawn pattern in the
  forward pass and the soft sample's gradient (straight-through), `"soft"`
  a mix of the six.
- **Forward pass.** The model runs through `keras.Model.stateless_call` with
  each pruned kernel's value replaced by `w * mask(logits)`, so the loss is
  differentiable with respect to the logits. Only the logits train (Adam);
  the model's weights stay frozen, and are written once, masked, at the end.
- **Result.** Every `steps / 10` steps the argmax masks are measured on all
  the calibration data; the best, or the magnitude masks if none beats them,
  are kept.
- **Loss.** With inputs only, distillation: the mean squared error between
  the dense model's outputs (computed once, before) and the masked model's.
  With `loss=` and `(inputs, targets)`, that loss on the targets.

Keras 3 models only (tf_keras has no `stateless_call`).

```python
batches = training_batches(model, x_calibration)        # distillation
result = learn_masks(model, plan.kernels, batches, LearnedOptions(steps=200))
result.masks          # {name: 0/1 array shaped like the kernel}
result.loss, result.magnitude_loss
```
"""

import dataclasses
import itertools
import math

import keras
import numpy as np
import tensorflow as tf

from tf_asp import calibration
from tf_asp.graph import trace
from tf_asp.log import logger

# The six 2:4 patterns of a group of 4 channels: the pairs of channels kept,
# in `itertools.combinations` order (so ties go to the lower channels).
PATTERNS = tuple(itertools.combinations(range(4), 2))
SAMPLING = ("hard", "soft")
CHECKS = 10  # how many times training measures its argmax masks on all the data
PROGRESS_BAR_STEPS = 10  # show a progress bar from this many steps


@dataclasses.dataclass(frozen=True)
class LearnedOptions:
    """How learned masks train (`prune_model`'s `learned_*` arguments).

    Attributes:
        steps: training steps, one calibration batch each (cycling); 0 keeps
            the magnitude masks.
        learning_rate: Adam's learning rate on the logits.
        temperature: `(start, end)` of the Gumbel-softmax temperature.
        sampling: `"hard"` (straight-through) or `"soft"`.
        seed: seeds the Gumbel noise: the same seed, data and weights give
            the same masks.
        loss: None (distil from the dense model) or a Keras loss (a name or
            a callable `loss(y_true, y_pred)`) on `(inputs, targets)` data.

    >>> LearnedOptions(steps=0).temperature
    (1.0, 0.1)
    """

    steps: int = 100
    learning_rate: float = 0.1
    temperature: tuple = (1.0, 0.1)
    sampling: str = "hard"
    seed: int = 0
    loss: object = None

    def __post_init__(self):
        if isinstance(self.steps, bool) or not isinstance(self.steps, (int, np.integer)):
            raise ValueError(f"learned_steps={self.steps!r}: give a whole number of steps (>= 0).")
        if self.steps < 0:
            raise ValueError(f"learned_steps={self.steps}: give a number of steps >= 0.")
        if not _positive(self.learning_rate):
            raise ValueError(
                f"learning_rate={self.learning_rate!r}: give a positive, finite number."
            )
        try:
            start, end = self.temperature
        except (TypeError, ValueError):
            start = end = None
        if not (_positive(start) and _positive(end) and end <= start):
            raise ValueError(
                f"temperature={self.temperature!r}: give (start, end), two positive numbers "
                "with end <= start, such as (1.0, 0.1)."
            )
        object.__setattr__(self, "temperature", (float(start), float(end)))
        if self.sampling not in SAMPLING:
            raise ValueError(
                f"learned_sampling={self.sampling!r}: use 'hard' (straight-through) or 'soft'."
            )
        if self.loss is not None:
            import keras

            try:
                keras.losses.get(self.loss)
            except (ValueError, TypeError) as error:
                raise ValueError(
                    f"loss={self.loss!r} is not a Keras loss: give a name such as 'mse' or "
                    "'sparse_categorical_crossentropy', a keras.losses.Loss or a callable "
                    "loss(y_true, y_pred); or None to distil from the dense model."
                ) from error

    def temperature_at(self, step):
        """The temperature of step `step` (geometric from start to end)."""
        start, end = self.temperature
        return start * (end / start) ** (step / max(self.steps - 1, 1))


@dataclasses.dataclass(frozen=True)
class LearnedMasks:
    """What `learn_masks` found.

    Attributes:
        masks: `{name: 0/1 float array shaped like the kernel}`.
        loss: the training loss of these masks over all calibration batches.
        magnitude_loss: the same loss with the magnitude masks (0 steps).
        steps: the steps trained.
        best_step: the step whose masks these are: the lowest `loss` among
            the magnitude masks (0) and those measured every `steps / 10`
            steps, so learned masks never lose to magnitude on this data.
    """

    masks: dict
    loss: float
    magnitude_loss: float
    steps: int
    best_step: int = 0


def training_batches(model, data, loss=None, input_shapes=None):
    """The calibration data as `(inputs, targets)` pairs: inputs a list of
    arrays (one per model input), targets None without `loss`.

    Without `loss`, `data` is what `criterion="activation"` reads (a dataset
    of inputs or `(inputs, targets)`, whose targets are ignored, or arrays).
    With `loss`, it is a dataset of `(inputs, targets)` batches, or a pair
    `(inputs, targets)` of arrays (batched by `calibration.BATCH_SIZE`).

    >>> training_batches(model, x_train[:256])[0][1] is None     # doctest: +SKIP
    True
    """
    if data is None:
        raise ValueError(
            "criterion='learned' needs calibration_data: a tf.data.Dataset of batches of "
            "model inputs, or an array (a list or dict of arrays for several inputs) of a "
            "few hundred samples; with loss=, batches of (inputs, targets)."
        )
    if loss is None:
        return [
            (batch, None) for batch in calibration.calibration_batches(model, data, input_shapes)
        ]
    if isinstance(data, tf.data.Dataset):
        pairs = []
        for element in data.as_numpy_iterator():
            if not (isinstance(element, tuple) and len(element) in (2, 3)):
                raise ValueError(_PAIRS_NEEDED)
            pairs.append((calibration.flat(element[0]), element[1]))
    elif isinstance(data, tuple) and len(data) == 2:
        inputs, targets = calibration.flat(data[0]), tf.nest.map_structure(np.asarray, data[1])
        sizes = {len(x) if x.ndim else None for x in inputs + tf.nest.flatten(targets)}
        if len(sizes) != 1 or None in sizes:
            raise ValueError(
                "calibration_data (inputs, targets) must hold the same number of samples on "
                f"their first axis; got shapes {[x.shape for x in inputs]} and "
                f"{[y.shape for y in tf.nest.flatten(targets)]}."
            )
        size = calibration.BATCH_SIZE
        pairs = [
            (
                [x[start : start + size] for x in inputs],
                tf.nest.map_structure(lambda y, s=start: y[s : s + size], targets),
            )
            for start in range(0, sizes.pop(), size)
        ]
    else:
        raise ValueError(_PAIRS_NEEDED)
    pairs = [(x, y) for x, y in pairs if x and x[0].ndim and len(x[0])]
    checked = calibration.checked_batches(model, [x for x, _ in pairs], input_shapes)
    return [(x, y) for x, (_, y) in zip(checked, pairs)]


_PAIRS_NEEDED = (
    "With loss=, calibration_data must hold targets: a tf.data.Dataset of (inputs, targets) "
    "batches, or a tuple (inputs, targets) of arrays. Or leave loss=None to distil from the "
    "dense model's outputs, which needs inputs only."
)


def check_model(model):
    """Raises a ValueError unless `model` is a Keras 3 model (`stateless_call`)."""
    if not hasattr(model, "stateless_call"):
        raise ValueError(
            f"criterion='learned' needs a Keras 3 model (it trains the masks through "
            f"keras.Model.stateless_call); {type(model).__name__} from "
            f"`{type(model).__module__}` has none. Use criterion='magnitude' or 'activation' "
            "for tf_keras models, or rebuild the model with Keras 3."
        )


class KernelGroups:
    """A kernel's groups of 4 input channels: `split` a kernel-shaped tensor
    into `(other axes..., groups, 4)`, `join` it back.

    >>> KernelGroups((8, 3), input_axes=(0,)).shape
    (3, 2, 4)
    """

    def __init__(self, shape, input_axes):
        rank = len(shape)
        inputs = sorted({int(a) % rank for a in input_axes})
        others = [a for a in range(rank) if a not in inputs]
        self.order = others + inputs
        self.inverse = list(np.argsort(self.order))
        self.moved = [int(shape[a]) for a in self.order]
        channels = math.prod(int(shape[a]) for a in inputs)
        self.shape = tuple(int(shape[a]) for a in others) + (channels // 4, 4)

    def split(self, value):
        return tf.reshape(tf.transpose(value, self.order), self.shape)

    def join(self, groups):
        return tf.transpose(tf.reshape(groups, self.moved), self.inverse)


def pattern_matrix(dtype=tf.float32):
    """The six patterns as a `(6, 4)` matrix of 0/1: row p keeps `PATTERNS[p]`."""
    return tf.constant([[float(c in kept) for c in range(4)] for kept in PATTERNS], dtype)


def initial_logits(value, groups):
    """`(other axes..., groups, 6)`: what each pattern keeps of `|value|`,
    over the kernel's mean `|w|` (float64), and those kept sums."""
    magnitudes = tf.abs(tf.cast(value, tf.float64))
    kept = tf.linalg.matmul(groups.split(magnitudes), pattern_matrix(tf.float64), transpose_b=True)
    mean = float(tf.reduce_mean(magnitudes))
    return kept / (mean if mean > 0 else 1.0), kept


def best_patterns(logits, kept):
    """Each group's argmax pattern: the largest logit, ties to the larger kept
    magnitude, then the first pattern (the lower channels)."""
    logits, kept = np.asarray(logits), np.asarray(kept)
    first = np.broadcast_to(-np.arange(len(PATTERNS)), logits.shape)
    return np.lexsort((first, kept, logits), axis=-1)[..., -1]


def learn_masks(model, kernels, batches, options):
    """Trains one pattern per group of 4 input channels of each kernel.

    Args:
        model: a built Keras 3 model (its weights are read, not changed).
        kernels: `{name: GemmKernel}` (`PruningPlan.kernels`); 2:4 runs
            along each one's input axes, a multiple of 4.
        batches: `training_batches(...)`.
        options: `LearnedOptions`.

    Returns:
        `LearnedMasks`.
    """
    check_model(model)
    trainable = list(model.trainable_variables)
    frozen = list(model.non_trainable_variables)
    slots = {}  # name -> (which list, position)
    for name, kernel in kernels.items():
        for which, variables in enumerate((trainable, frozen)):
            for position, variable in enumerate(variables):
                if variable is kernel.variable:
                    slots[name] = (which, position)
        if name not in slots:
            raise ValueError(
                f"Kernel {name} is not among model '{model.name}''s variables, so learned "
                "masks cannot replace its value. Use criterion='magnitude' for this model."
            )
    values = [[tf.convert_to_tensor(v) for v in variables] for variables in (trainable, frozen)]
    names = list(kernels)
    groups = {name: KernelGroups(kernels[name].shape, kernels[name].input_axes) for name in names}
    starts = {
        name: initial_logits(values[slots[name][0]][slots[name][1]], groups[name]) for name in names
    }
    logits = [tf.Variable(tf.cast(starts[name][0], tf.float32), name="logits") for name in names]
    patterns = pattern_matrix()
    structure = trace.input_structure(model)
    loss_fn = _loss_function(options.loss)

    def masked_values(choices):
        """The model's variable values with each kernel times its mask;
        `choices[i]` are kernel i's pattern weights, `(..., groups, 6)`."""
        result = [list(v) for v in values]
        for name, choice in zip(names, choices):
            which, position = slots[name]
            weight = result[which][position]
            mask = groups[name].join(tf.linalg.matmul(choice, patterns))
            result[which][position] = weight * tf.cast(mask, weight.dtype)
        return result

    def run(masked, inputs):
        outputs, _ = model.stateless_call(
            masked[0], masked[1], trace.model_arguments(structure, inputs), training=False
        )
        return outputs

    @tf.function(reduce_retracing=True)
    def dense_outputs(inputs):
        return run(values, inputs)

    targets = [
        dense_outputs(list(x)) if options.loss is None else y for x, y in batches
    ]  # distillation targets: the dense outputs, computed once

    @tf.function(reduce_retracing=True)
    def evaluate(choices, inputs, target):
        return loss_fn(target, run(masked_values(choices), inputs))

    def total_loss(choices):
        one_hot = [tf.one_hot(c, len(PATTERNS), dtype=tf.float32) for c in choices]
        losses = [float(evaluate(one_hot, list(x), t)) for (x, _), t in zip(batches, targets)]
        return float(np.mean(losses))

    kept = {name: starts[name][1].numpy() for name in names}
    magnitude_choices = [best_patterns(starts[name][0].numpy(), kept[name]) for name in names]
    magnitude_loss = total_loss(magnitude_choices)
    logger.info(
        "Learning 2:4 masks of %d kernels for %d steps (%s loss with magnitude masks: %.6g)",
        len(names),
        options.steps,
        "distillation" if options.loss is None else "the given",
        magnitude_loss,
    )

    optimizer = keras.optimizers.Adam(options.learning_rate)
    hard = options.sampling == "hard"

    @tf.function(reduce_retracing=True)
    def step(index, temperature, inputs, target):
        with tf.GradientTape() as tape:
            choices = [
                _sample(variable, temperature, (options.seed, index * len(names) + k), hard)
                for k, variable in enumerate(logits)
            ]
            loss = loss_fn(target, run(masked_values(choices), inputs))
        optimizer.apply(tape.gradient(loss, logits), logits)
        return loss

    best = (magnitude_loss, magnitude_choices, 0)  # loss, choices, step
    every = max(options.steps // CHECKS, 1)
    bar = _progress_bar(options.steps)
    for index in range(options.steps):
        (x, _), target = batches[index % len(batches)], targets[index % len(batches)]
        loss = float(
            step(
                tf.constant(index, tf.int64),
                tf.constant(options.temperature_at(index), tf.float32),
                list(x),
                target,
            )
        )
        if not math.isfinite(loss):
            raise ValueError(
                f"Learning masks: the loss became {loss} at step {index}. Nothing was "
                "changed; lower learning_rate or check the calibration data and loss."
            )
        if bar is not None:
            bar.update(index + 1, values=[("loss", loss)])
        if (index + 1) % every == 0 or index + 1 == options.steps:
            choices = [best_patterns(v.numpy(), kept[name]) for name, v in zip(names, logits)]
            measured = total_loss(choices)
            if measured < best[0]:
                best = (measured, choices, index + 1)
            logger.info(
                "Learning masks: step %d/%d, sampled loss %.6g, argmax masks' loss %.6g",
                index + 1,
                options.steps,
                loss,
                measured,
            )
    loss, choices, best_step = best
    if options.steps and not best_step:
        logger.warning(
            "Learned masks did not beat the magnitude masks on the calibration data in %d "
            "steps (loss %.6g); the magnitude masks are kept. Try more learned_steps, another "
            "learning_rate or more calibration data.",
            options.steps,
            magnitude_loss,
        )
    logger.info(
        "Learned 2:4 masks (step %d): loss %.6g (magnitude masks: %.6g)",
        best_step,
        loss,
        magnitude_loss,
    )
    masks = {
        name: groups[name].join(tf.gather(patterns, choice)).numpy()
        for name, choice in zip(names, choices)
    }
    return LearnedMasks(masks, loss, magnitude_loss, options.steps, best_step)


def _progress_bar(steps):
    """A Keras progress bar over the training steps, showing the last loss;
    None for a few steps."""
    if steps < PROGRESS_BAR_STEPS:
        return None
    return keras.utils.Progbar(steps, stateful_metrics=["loss"], unit_name="step")


def _sample(logits, temperature, seed, hard):
    """Gumbel-softmax pattern weights `(..., groups, 6)` from `logits`."""
    uniform = tf.random.stateless_uniform(
        tf.shape(logits), seed=tf.cast(tf.stack(seed), tf.int64), minval=1e-9, maxval=1.0
    )
    soft = tf.nn.softmax((logits - tf.math.log(-tf.math.log(uniform))) / temperature, axis=-1)
    if not hard:
        return soft
    drawn = tf.one_hot(tf.argmax(soft, axis=-1), len(PATTERNS), dtype=soft.dtype)
    return drawn + soft - tf.stop_gradient(soft)


def _loss_function(loss):
    """`loss(targets, outputs)` -> a scalar: the Keras loss averaged and summed
    over outputs, or (None) the mean squared error, summed over float outputs."""
    if loss is None:

        def distillation(targets, outputs):
            pairs = zip(tf.nest.flatten(targets), tf.nest.flatten(outputs))
            return tf.add_n(
                [
                    tf.reduce_mean(tf.square(tf.cast(o, tf.float32) - tf.cast(t, tf.float32)))
                    for t, o in pairs
                    if o.dtype.is_floating
                ]
            )

        return distillation
    import keras

    function = keras.losses.get(loss)

    def given(targets, outputs):
        pairs = zip(tf.nest.flatten(targets), tf.nest.flatten(outputs))
        return tf.add_n([tf.reduce_mean(tf.cast(function(t, o), tf.float32)) for t, o in pairs])

    return given


def _positive(value):
    try:
        return math.isfinite(float(value)) and float(value) > 0
    except (TypeError, ValueError):
        return False
