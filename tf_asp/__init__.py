"""tf_asp: automatic 2:4 structured sparsity for TensorFlow / Keras 3.

Wrap the optimizer, fine-tune, and every eligible Dense and Conv2D kernel keeps
exactly 2 of every 4 weights along its input channels:

```python
import tf_asp

optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.01), model)
model.compile(optimizer=optimizer, loss="mse")
model.fit(x, y)
tf_asp.check_pruned_layers(model, check_structured=True)
```
"""

try:
    import tensorflow  # noqa: F401
except ImportError as error:  # pragma: no cover - exercised without TF only
    raise ImportError(
        "tf_asp needs TensorFlow 2.21 with Keras 3, which is not installed. "
        "Install it with `pip install 'tf_asp[cpu]'` (tensorflow-cpu) or "
        "`pip install 'tf_asp[gpu]'` (tensorflow[and-cuda])."
    ) from error

from tf_asp.log import set_verbosity
from tf_asp.masks import check_pruned_layers
from tf_asp.optimizer import AspOptimizerWrapper
from tf_asp.optimizer import AspOptimizerWrapperV2

__version__ = "0.1.0"
