"""tf.distribute: where a wrapper may be built, and that every worker agrees.

tf_asp needs no broadcast under a strategy. Every replica holds the same
weights (mirrored variables), the permutation search is deterministic (a
seed, exact integer scores, the same result on every backend), and every
replica computes its masks from the same weights at the first step. What
code cannot make true by itself is checked here, before anything is written:

- the model's variables are mirrored by the strategy whose scope the wrapper
  is built in, and the wrapped optimizer was created in that scope too
  (`check_strategy`);
- on a multi-worker job, every worker holds the same trainable weights when
  it wraps, and after it permutes (`check_workers_agree`): two gathers of 32
  bytes per replica, no broadcast of weights.

```python
with strategy.scope():
    model = build_model()
    model.load_weights("pretrained.weights.h5")  # the same file on every worker
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.01), model)

replica_digests(model.trainable_variables)  # ['3f1c...', '3f1c...']: one per replica
```
"""

import hashlib

import numpy as np
import tensorflow as tf

from tf_asp import compat

SUPPORTED = (
    "tf_asp permutes and prunes mirrored variables (every replica holds the same "
    "weights) and supports the default strategy, OneDeviceStrategy, MirroredStrategy "
    "and MultiWorkerMirroredStrategy."
)
_MIRRORED = (tf.distribute.MirroredStrategy, tf.distribute.MultiWorkerMirroredStrategy)
_SAME_SCOPE = (
    "Create the model, the optimizer and the wrapper inside the same "
    "`with strategy.scope():`. Nothing was changed."
)
_DIGEST_BYTES = 32  # SHA-256


def check_strategy(model, optimizer):
    """Raises a ValueError unless `optimizer` can be wrapped for `model` here.

    Here is the current `tf.distribute` scope: it must be one tf_asp supports,
    the one the model's variables were created in, and the one the optimizer
    was created in.
    """
    strategy = tf.distribute.get_strategy()
    scoped = tf.distribute.has_strategy()
    here = f"the scope of a {type(strategy).__name__}" if scoped else "no strategy scope"
    if scoped and not isinstance(strategy, _MIRRORED + (tf.distribute.OneDeviceStrategy,)):
        raise ValueError(
            f"AspOptimizerWrapperV2 is being built in {here}. {SUPPORTED} Nothing was changed."
        )
    for variable in model.variables:
        if compat.is_mirrored_variable(variable):
            owner = compat.tf_variable(variable).distribute_strategy
            if owner is not strategy:
                other = "another " if type(owner) is type(strategy) else "a "
                raise ValueError(
                    f"Model '{model.name}' was created in the scope of {other}"
                    f"{type(owner).__name__}, but the wrapper is being built in {here}. "
                    f"{_SAME_SCOPE}"
                )
        elif not compat.is_single_device_variable(variable):
            raise ValueError(
                f"Variable {variable.path} of model '{model.name}' is not mirrored "
                f"({type(compat.tf_variable(variable)).__name__}). {SUPPORTED} "
                "Nothing was changed."
            )
        elif isinstance(strategy, _MIRRORED):
            raise ValueError(
                f"Model '{model.name}' was created outside strategy.scope() (its variables "
                f"are not mirrored), but the wrapper is being built in {here}. {_SAME_SCOPE}"
            )
    owner = compat.optimizer_strategy(optimizer)
    if owner is not strategy:
        raise ValueError(
            f"Optimizer '{optimizer.name}' was created outside the scope the wrapper is "
            f"being built in ({here}). {_SAME_SCOPE}"
        )


def check_workers_agree(model, permuted=False):
    """On a multi-worker strategy, raises a ValueError unless every worker holds
    the same trainable weights; elsewhere does nothing.

    A wrapper calls it before and after permutation (`permuted=True`, which
    names the causes), on every worker: it is a collective.
    """
    digests = set(replica_digests(model.trainable_variables, multi_worker_only=True))
    if len(digests) <= 1:
        return
    if not permuted:
        raise ValueError(
            f"The workers hold different weights of model '{model.name}', so each would "
            "permute and prune its own. Every worker must wrap the same weights: create "
            "the model inside strategy.scope() (MultiWorkerMirroredStrategy copies the "
            "first worker's initial values to all), and load pretrained weights before "
            "wrapping, from the same file on every worker. Nothing was changed."
        )
    raise ValueError(
        f"The workers permuted model '{model.name}' differently from the same weights: "
        "they wrapped it with different arguments (permute, padding), or a permutation "
        "search stopped at search_time_limit on some worker. Wrap with the same "
        "arguments everywhere, and search_time_limit=None (or one no worker reaches). "
        "Every worker's model still computes what it did, but their weights now differ."
    )


def replica_digests(variables, multi_worker_only=False):
    """The SHA-256 of `variables` as each replica holds them (hex, replica order).

    The replicas are those of the strategy that mirrors the variables (one,
    for single-device variables). Each local replica hashes its own
    components; under a multi-worker strategy the other workers' digests are
    gathered: a collective, so every worker must call this at the same point.
    With `multi_worker_only=True`, a single process returns `[]` unhashed.

    ```python
    digests = replica_digests(model.weights + optimizer.masks)
    assert len(set(digests)) == 1  # every replica holds the same bits
    ```
    """
    variables = list(variables)
    mirrored = [compat.tf_variable(v) for v in variables if compat.is_mirrored_variable(v)]
    strategy = mirrored[0].distribute_strategy if mirrored else None
    local_replicas = len(strategy.extended.worker_devices) if strategy else 1
    multi_worker = strategy is not None and strategy.num_replicas_in_sync > local_replicas
    if multi_worker_only and not multi_worker:
        return []
    digests = [hashlib.sha256() for _ in range(local_replicas)]
    for variable in variables:
        value = compat.tf_variable(variable)
        components = value.values if compat.is_mirrored_variable(variable) else None
        for digest, component in zip(digests, components or [value] * local_replicas):
            digest.update(np.ascontiguousarray(component.numpy()).tobytes())
    # Bytes as float32 (exact), a dtype every device's collectives gather.
    local = np.stack([np.frombuffer(d.digest(), np.uint8) for d in digests]).astype(np.float32)
    if multi_worker:
        local = _gather(strategy, local).numpy()
    return [bytes(row.astype(np.uint8)).hex() for row in local.reshape(-1, _DIGEST_BYTES)]


def _gather(strategy, local):
    """Every replica's row of `local` (one per local replica), on every worker.

    Replicas are numbered worker by worker, so a replica's local index is its
    global one modulo the local count.
    """
    local = tf.constant(local)
    per_replica = strategy.experimental_distribute_values_from_function(
        lambda context: local[context.replica_id_in_sync_group % local.shape[0]]
    )
    return tf.function(lambda: strategy.gather(per_replica, axis=0))()
