"""The package's face: what needs TensorFlow, what the docs name, one version."""

import importlib
import os
import pathlib
import re
import subprocess
import sys

import pytest

import tf_asp

REPO = pathlib.Path(__file__).resolve().parent.parent
DOCUMENTS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]
# Makes `import tensorflow` (and Keras) fail in a subprocess, as if uninstalled.
WITHOUT_TENSORFLOW = "import sys; sys.modules['tensorflow'] = sys.modules['keras'] = None; "


def run_python(code):
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, env=env
    )


def test_the_search_and_its_command_line_need_only_numpy():
    code = WITHOUT_TENSORFLOW + (
        "import runpy; sys.argv = ['tf_asp.search', '--channels', '16', '--filters', '8',"
        " 'optimize_stripe_groups,8,0']; runpy.run_module('tf_asp.search', run_name='__main__')"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert "optimize_stripe_groups,8,0" in result.stdout


def test_keras_names_without_tensorflow_say_what_to_install():
    result = run_python(WITHOUT_TENSORFLOW + "import tf_asp; tf_asp.AspOptimizerWrapperV2")
    assert result.returncode != 0
    assert "ImportError" in result.stderr
    assert "pip install 'tf_asp[cpu]'" in result.stderr
    assert "tf_asp.AspOptimizerWrapperV2" in result.stderr


def test_unknown_names_are_attribute_errors():
    with pytest.raises(AttributeError, match="no attribute 'Missing'"):
        tf_asp.Missing  # noqa: B018


def test_every_public_name_resolves():
    for name in tf_asp.__all__:
        assert getattr(tf_asp, name) is not None, name
    assert set(tf_asp.__all__) <= set(dir(tf_asp))


def documented_names():
    """Every `tf_asp.x.y` name (and `python -m tf_asp.x` module) in the docs'
    code blocks and inline code, with the document it comes from. Names used
    through an import (`from tf_asp import search; search.find_permutation`)
    count with their full path."""
    names = set()
    for document in DOCUMENTS:
        text = document.read_text()
        blocks = re.findall(r"```\w*\n(.*?)```", text, re.S)
        blocks += re.findall(r"`([^`\n]+)`", re.sub(r"```.*?```", "", text, flags=re.S))
        for block in blocks:
            for module, imported in re.findall(r"from (tf_asp[\w.]*) import (\w+)", block):
                names.add((document.name, f"{module}.{imported}"))
                for used in re.findall(rf"\b{imported}((?:\.\w+)+)", block):
                    names.add((document.name, f"{module}.{imported}{used}"))
            for name in re.findall(r"\btf_asp(?:\.\w+)+", block):
                names.add((document.name, name.rstrip(".")))
    return sorted(names)


@pytest.mark.parametrize("document, name", documented_names())
def test_names_in_the_docs_exist(document, name):
    parts = name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            target = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            target = getattr(target, attribute)
        return
    pytest.fail(f"{document} names {name}, which does not exist")


def test_the_docs_name_some_tf_asp_names():
    assert len(documented_names()) >= 10


def test_version_is_written_once():
    result = subprocess.run(
        [sys.executable, "setup.py", "--version"], capture_output=True, text=True, cwd=REPO
    )
    assert result.stdout.strip().splitlines()[-1] == tf_asp.__version__


def test_importing_tf_asp_after_keras_lets_keras_load_a_saved_wrapper(tmp_path):
    import keras
    import numpy as np
    from helpers import small_mlp

    model = small_mlp()
    optimizer = tf_asp.AspOptimizerWrapperV2(keras.optimizers.SGD(0.1), model, permute=False)
    model.compile(optimizer=optimizer, loss="mse")
    model.fit(np.ones((4, 32)), np.zeros((4, 16)), verbose=0)
    model.save(tmp_path / "model.keras")
    code = (
        "import keras; import tf_asp; "
        f"model = keras.models.load_model({str(tmp_path / 'model.keras')!r}); "
        "print(type(model.optimizer).__name__, len(model.optimizer.masks))"
    )
    result = run_python(code)
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["AspOptimizerWrapperV2", "2"]
