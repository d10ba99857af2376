"""Timing a serving function the same way for every runtime, and comparing outputs.

```python
throughputs = measure_throughput(session, feeds, 32, warmup=20, iterations=100, runs=5)
statistics.median(throughputs)  # samples/sec
largest_difference(session(**feeds), signature(**inputs))
```

A serving function takes its inputs as keyword arguments and returns a dict
of outputs (TensorFlow tensors or NumPy arrays), like a SavedModel signature.
"""

import time

import numpy as np


def measure_throughput(function, inputs, batch_size, warmup, iterations, runs, wait=None):
    """Samples per second of `runs` timed runs of `iterations` calls each.

    `warmup` calls run first and are not timed. Each run ends with `wait` on
    its last call's outputs (default `wait_for_outputs`: read them back to the
    host), which waits for all queued GPU work.
    """
    wait = wait or wait_for_outputs
    for _ in range(warmup):
        outputs = function(**inputs)
    if warmup:
        wait(outputs)
    throughputs = []
    for _ in range(runs):
        start = time.perf_counter()
        for _ in range(iterations):
            outputs = function(**inputs)
        wait(outputs)
        throughputs.append(batch_size * iterations / (time.perf_counter() - start))
    return throughputs


def wait_for_outputs(outputs):
    """Reads every output of a call back to the host."""
    for value in outputs.values():
        np.asarray(value)


def largest_difference(outputs, expected):
    """The largest absolute difference between two dicts of outputs.

    Outputs pair by name when every expected name is among `outputs`, else by
    position.
    """
    if set(expected) <= set(outputs):
        pairs = [(outputs[name], value) for name, value in expected.items()]
    else:
        pairs = list(zip(outputs.values(), expected.values()))
    return max(
        float(np.max(np.abs(np.asarray(got, np.float64) - np.asarray(want, np.float64))))
        for got, want in pairs
    )
