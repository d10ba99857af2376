"""The `tf_asp` logger and a one-call way to turn it up."""

import logging

logger = logging.getLogger("tf_asp")


def set_verbosity(level):
    """Sets how much tf_asp logs (a `logging` level or its name).

    At INFO it reports each permutation group and the masks it builds; at
    DEBUG it also says why every skipped layer or op was skipped.

    ```python
    tf_asp.set_verbosity("DEBUG")
    ```
    """
    if isinstance(level, str):
        level = logging.getLevelName(level.upper())
        if not isinstance(level, int):
            raise ValueError(f"Unknown logging level name: {level!r}.")
    logger.setLevel(level)
    if not logger.handlers:
        handler = logging.StreamHandler()
        handler.setFormatter(logging.Formatter("tf_asp %(levelname)s: %(message)s"))
        logger.addHandler(handler)
