"""`permute_model`: trace, group, search, apply and verify channel permutations."""

import dataclasses
import time

import numpy as np

from tf_asp import registry
from tf_asp.graph import apply
from tf_asp.graph import verify as verification
from tf_asp.graph.groups import find_groups
from tf_asp.graph.plot import plot_graph
from tf_asp.graph.spaces import format_sizes
from tf_asp.graph.trace import trace_model
from tf_asp.log import logger
from tf_asp.patterns import parse_pattern
from tf_asp.search import efficacy
from tf_asp.search import find_permutation
from tf_asp.search import kept_magnitude

VERIFY_TOLERANCE = 1e-4  # float32 rounding of a permuted model is ~1e-6
PROGRESS_BAR_GROUPS = 8  # show a progress bar from this many groups


class PermutationError(RuntimeError):
    """The permuted model does not compute what the original computed."""


@dataclasses.dataclass(frozen=True)
class GroupResult:
    """One permuted group: its layers and how much its search gained.

    A group of several segments (attention heads, the inputs of a channel
    concatenation) was searched segment by segment; its figures add up the
    segments', and its efficacy is measured against the segments' bound.
    """

    id: int
    consumers: tuple  # C-permuted layers (input channels)
    producers: tuple  # K-permuted layers (output channels)
    channels: int
    efficacy: float  # % of the possible gain over no permutation
    magnitude: float  # magnitude (or score) the N:M masks keep with the permutation
    identity_magnitude: float  # ... without it
    backend: str
    duration: float  # seconds of search
    note: str = ""
    segments: tuple = ()  # sizes of the segments, when more than one

    def __str__(self):
        note = f" ({self.note})" if self.note else ""
        segments = f" in segments {format_sizes(self.segments)}" if len(self.segments) > 1 else ""
        return (
            f"group {self.id}: C-permuted {', '.join(self.consumers)}; "
            f"K-permuted {', '.join(self.producers) or '-'}; {self.channels} "
            f"channels{segments}, efficacy {self.efficacy:.1f}% in {self.duration:.2f} s "
            f"({self.backend}){note}"
        )


@dataclasses.dataclass(frozen=True)
class SkippedGroup:
    """A group left unpermuted, and why."""

    id: int
    consumers: tuple
    reason: str

    def __str__(self):
        return f"group {self.id} skipped ({', '.join(self.consumers)}): {self.reason}"


@dataclasses.dataclass(frozen=True)
class PermutationSummary:
    """What `permute_model` did.

    Attributes:
        groups: a `GroupResult` per permuted group.
        skipped: a `SkippedGroup` per group left as it was.
        c_permuted: names of the layers whose input channels were permuted.
        k_permuted: names of the layers whose output channels were permuted.
        error: relative output error of the permuted model (None unverified).
        duration: seconds `permute_model` took.
        dense_layers: `(name, reason)` of every GEMM layer that is not
            pruned (and so not searched on), and why.
        pattern: the N:M pattern the search optimized for.
    """

    groups: tuple
    skipped: tuple
    error: float
    duration: float
    dense_layers: tuple = ()
    pattern: object = "2:4"

    @property
    def c_permuted(self):
        return sorted({name for g in self.groups for name in g.consumers})

    @property
    def k_permuted(self):
        return sorted({name for g in self.groups for name in g.producers})

    def __str__(self):
        error = "not verified" if self.error is None else f"relative error {self.error:.1e}"
        lines = [
            f"Channel permutation for {self.pattern}: {len(self.groups)} groups, "
            f"{len(self.c_permuted)} layers C-permuted, "
            f"{len(self.k_permuted)} K-permuted, {len(self.skipped)} groups "
            f"skipped; {error}; {self.duration:.1f} s"
        ]
        lines += [f"  {g}" for g in self.groups]
        lines += [f"  {s}" for s in self.skipped]
        lines += [f"  {name} stays dense: {reason}" for name, reason in self.dense_layers]
        return "\n".join(lines)


def permute_model(
    model,
    input_shapes=None,
    padding=False,
    search_device="auto",
    search_time_limit=60,
    plot_to_file=None,
    verify=True,
    verify_inputs=None,
    seed=0,
    *,
    search=find_permutation,
    pattern="2:4",
    input_scales=None,
):
    """Permutes `model`'s channels so N:M pruning (2:4 by default) keeps more magnitude.

    The model computes the same function afterwards: each group's consumers
    get their input channels permuted, its producers their output channels,
    and every per-channel variable in between (bias, BatchNormalization,
    LayerNormalization, depthwise kernels, embedding tables, position
    embeddings) moves with them; a group of several segments (attention
    heads, the inputs of a channel concatenation) is permuted within each. Nothing is
    written until every group was searched, and with `verify=True` the
    outputs on a random batch are compared before and after: a mismatch
    restores the original weights and raises `PermutationError` naming the
    group.

    Args:
        model: a built Keras model.
        input_shapes: the input shape without the batch dim, a
            `tf.TensorSpec`, or a list of them; only needed when
            `model.inputs` is unknown (a subclassed model).
        padding: the `padding` of the wrapper: which Dense layers are pruned.
        search_device: `"auto"`, `"GPU"`, `"CPU"` or `"numpy"`.
        search_time_limit: seconds per group's search (None: no limit); a
            group of several segments shares it among them by width.
        plot_to_file: write the op graph, coloured by what was permuted, to
            this `.png`, `.pdf`, `.svg` or `.dot` file.
        verify: compare the outputs before and after.
        verify_inputs: the batch to compare them on (an array, or a list or
            dict of them like the model's inputs); default: generated, see
            `tf_asp.graph.verify`.
        seed: seed of the searches (the same seed gives the same result).
        search: the search function, `tf_asp.search.find_permutation` or one
            with its signature (`matrix, device=, time_limit=, seed=,
            pattern=`) that returns a `SearchResult`.
        pattern: the N:M pattern the search optimizes for (`"2:4"`, `"1:2"`,
            `"4:8"`, ...). A group whose segments (heads, concatenated
            inputs) are not multiples of M is skipped, as its N:M groups
            would straddle them.
        input_scales: `{id(kernel variable): one factor per input channel}`:
            the search keeps the largest `|w| * factor` instead of `|w|`
            (activation-aware scores, `tf_asp.calibration`).

    Returns:
        A `PermutationSummary`.

    Example:

    ```python
    summary = permute_model(model, search_device="CPU")
    print(summary)  # groups, efficacy, skipped groups and why
    ```
    """
    start = time.perf_counter()
    pattern = parse_pattern(pattern)
    graph = trace_model(model, input_shapes)
    if verify and verify_inputs is not None:
        inputs = verification.check_inputs(graph, verify_inputs)
    else:
        inputs = verification.verification_inputs(graph, seed) if verify else None
    groups, roles = find_groups(graph, padding=padding)
    for group in groups:
        if group.skip_reason is None and any(s.size % pattern.m for s in group.segments):
            sizes = format_sizes([s.size for s in group.segments])
            group.skip_reason = (
                f"segments of {sizes} channels are not all multiples of {pattern.m}: "
                f"{pattern} groups would straddle them"
                if len(group.segments) > 1
                else f"{sizes} channels is not a multiple of {pattern.m} ({pattern})"
            )
    active = [g for g in groups if g.skip_reason is None]
    skipped = tuple(
        SkippedGroup(g.id, tuple(g.consumer_names), g.skip_reason)
        for g in groups
        if g.skip_reason is not None
    )
    for entry in skipped:
        logger.info("Permutation %s", entry)
    for group in active:
        for kernel in group.consumers:
            if not kernel.prunable:
                logger.debug(
                    "Permutation group %d: %s is C-permuted with its siblings "
                    "but not searched on (%s)",
                    group.id,
                    kernel.name,
                    kernel.reason,
                )

    permutations, results = {}, []
    for group in _progress(active):
        permutations[group.id], result = _search_group(
            group, search, search_device, search_time_limit, seed, pattern, input_scales
        )
        results.append(result)
        logger.info("Permutation %s", result)

    values = apply.permuted_values(active, permutations)
    before = graph.run(inputs) if verify else None
    originals = apply.assign(values)
    error = None
    if verify:
        error = _verify(graph, inputs, before, active, permutations, originals)
    dense = tuple(
        (gemm.name, gemm.unprunable_reason(padding))
        for gemm in registry.gemm_layers(model)
        if gemm.unprunable_reason(padding) is not None
    )
    summary = PermutationSummary(
        tuple(results), skipped, error, time.perf_counter() - start, dense, pattern
    )
    logger.info("%s", str(summary).splitlines()[0])
    if plot_to_file is not None:
        plot_graph(graph, roles, groups, plot_to_file)
    return summary


def _search_group(group, search, device, time_limit, seed, pattern, input_scales):
    """`(permutation, GroupResult)` of a group, searched segment by segment.

    Each segment's search sees the stacked columns its prunable consumers
    hold there (N:M groups never straddle segments, whose sizes are
    multiples of M), and gets a share of the time limit by its width. A
    segment no prunable kernel reads, or of only M channels, keeps its order.
    """
    permutation = apply.identity(group.segments)
    kept = identity_kept = bound = duration = 0.0
    backends, losers = set(), []
    for segment, blocks in zip(group.segments, group.search_blocks(input_scales)):
        if not blocks or segment.size <= pattern.m:
            continue
        matrix = np.concatenate([block for _, block in blocks])
        share = None if time_limit is None else time_limit * segment.size / group.channels
        result = search(matrix, device=device, time_limit=share, seed=seed, pattern=pattern)
        order = apply.check_permutation(result.permutation, [(0, segment.size)])
        loser = _first_loser(blocks, order, pattern)
        if loser is not None:
            order, losers = np.arange(segment.size), losers + [loser]
        permutation[segment.start : segment.start + segment.size] = segment.start + order
        kept += result.identity_magnitude if loser else result.magnitude
        identity_kept += result.identity_magnitude
        bound += result.bound
        duration += result.duration
        backends.add(str(result.backend))
    note = ""
    if losers:
        where = "" if len(group.segments) == 1 else f" in {len(losers)} segments"
        note = f"identity kept{where}: {', '.join(dict.fromkeys(losers))} would keep less"
    return permutation, GroupResult(
        id=group.id,
        consumers=tuple(group.consumer_names),
        producers=tuple(group.producer_names),
        channels=group.channels,
        efficacy=float(efficacy(kept, identity_kept, bound)),
        magnitude=float(kept),
        identity_magnitude=float(identity_kept),
        backend="/".join(sorted(backends)) or "-",
        duration=float(duration),
        note=note,
        segments=tuple(s.size for s in group.segments) if len(group.segments) > 1 else (),
    )


def _first_loser(blocks, order, pattern):
    """The first layer that would keep less with `order` than without.

    The search maximizes the magnitude all siblings keep together; this
    makes sure no single pruned layer is worse off than unpermuted.
    """
    for kernel, block in blocks:
        identity = kept_magnitude(block, pattern=pattern)
        if kept_magnitude(block, order, pattern=pattern) < identity * (1 - 1e-6):
            return kernel.name
    return None


def _verify(graph, inputs, before, groups, permutations, originals):
    """Relative output error; restores the weights and raises if too large."""
    error = verification.relative_error(before, graph.run(inputs))
    if error <= VERIFY_TOLERANCE:
        return error
    apply.assign(originals)
    culprits = []
    for group in groups:
        previous = apply.assign(apply.permuted_values([group], permutations))
        if verification.relative_error(before, graph.run(inputs)) > VERIFY_TOLERANCE:
            culprits.append(group)
        apply.assign(previous)
    names = (
        "; ".join(
            f"group {g.id} (C-permuted {', '.join(g.consumer_names)}; K-permuted "
            f"{', '.join(g.producer_names) or '-'})"
            for g in culprits
        )
        or "the groups together"
    )
    raise PermutationError(
        f"The permuted model's outputs differ from the original's (relative "
        f"error {error:.2e} > {VERIFY_TOLERANCE:.0e}) because of {names}. "
        "The original weights were restored. An op between these layers "
        "probably mixes channels in a way tf_asp.graph's op lists do not "
        "know; please report it, and pass permute=False meanwhile."
    )


def _progress(groups):
    if len(groups) < PROGRESS_BAR_GROUPS:
        yield from groups
        return
    from keras.utils import Progbar

    bar = Progbar(len(groups), unit_name="group")
    for index, group in enumerate(groups):
        yield group
        bar.update(index + 1)
