"""Keras 2 (tf_keras) from fine-tuning to serving: check_pruned_layers, the
sparsity report of tf_keras models, SavedModels and `.h5` files, and the demo
(`main.py --keras2`)."""

import importlib.util
import pathlib

import numpy as np
import pytest
import tensorflow as tf
import tf_keras

import tf_asp
from tf_asp.report import sparsity_report

pytestmark = pytest.mark.usefixtures("fresh_tf_keras")

REPO = pathlib.Path(__file__).resolve().parents[1]
PRUNED = ["conv2d_1/kernel", "conv2d_2/kernel", "dense/kernel"]  # the demo's


def load_main():
    spec = importlib.util.spec_from_file_location("main", REPO / "main.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def demo(tmp_path_factory):
    """`python main.py --keras2`, fine-tuned a few steps: (model, SavedModel path)."""
    tf_keras.utils.set_random_seed(0)
    path = tmp_path_factory.mktemp("demo") / "exported_model"
    main = load_main()
    model = main.run(steps=3, batch_size=16, output_dir=str(path), keras2=True)
    return model, str(path)


def rows_by_name(report):
    return {row.name: row for row in report.rows}


def test_the_demo_fine_tunes_a_tf_keras_model_with_a_legacy_optimizer(demo, capsys):
    model, _ = demo
    assert isinstance(model, tf_keras.Model)
    assert isinstance(model.optimizer.inner_optimizer, tf_keras.optimizers.legacy.SGD)
    assert tf_asp.check_pruned_layers(model, check_structured=True) == (3, 5)
    tf_asp.check_pruned_layers(model, show_all=True)
    printed = capsys.readouterr().out
    assert "conv2d_1" in printed and "2:4=yes" in printed and "output dim 10" in printed


def test_the_demo_command_line_takes_keras2(tmp_path, capsys):
    load_main().main(["--keras2", "--steps", "1", "--batch_size", "8", "--output_dir", ""])
    assert "2:4 sparse layers: 3 of 5 GEMM layers" in capsys.readouterr().out


def test_the_exported_savedmodel_serves_what_the_model_computes(demo):
    model, path = demo
    images = np.random.default_rng(0).random((8, 32, 32, 3), dtype=np.float32)
    loaded = tf.saved_model.load(path)  # kept: its functions hold its variables weakly
    served = loaded.serve(images)
    np.testing.assert_allclose(served.numpy(), model(images).numpy(), rtol=1e-5, atol=1e-5)


def test_the_report_of_a_tf_keras_model(demo):
    model, _ = demo
    report = sparsity_report(model, print_table=False)
    assert [row.name for row in report.sparse_ready] == PRUNED
    assert report.source == "model 'toy_convnet'"


@pytest.mark.filterwarnings("ignore:You are saving your model as an HDF5 file")
@pytest.mark.parametrize(
    "save",
    [
        lambda model, tmp: model.export(str(tmp / "exported")) or tmp / "exported",
        lambda model, tmp: model.save(str(tmp / "saved")) or tmp / "saved",
        lambda model, tmp: model.save(str(tmp / "model.h5")) or tmp / "model.h5",
        lambda model, tmp: model.save_weights(str(tmp / "weights.h5")) or tmp / "weights.h5",
    ],
    ids=["export", "savedmodel", "h5 model", "h5 weights"],
)
def test_the_report_of_what_tf_keras_saves_agrees_with_the_model(demo, tmp_path, save):
    model, _ = demo
    path = save(model, tmp_path)
    from_file = rows_by_name(sparsity_report(str(path), print_table=False))
    assert from_file == rows_by_name(sparsity_report(model, print_table=False))
    assert [name for name, row in from_file.items() if row.sparse_ready] == PRUNED


def test_the_report_rejects_an_h5_path_that_is_no_hdf5_file(tmp_path):
    (tmp_path / "weights.h5").write_text("not a model")
    with pytest.raises(ValueError, match="is not an HDF5 file"):
        sparsity_report(str(tmp_path / "weights.h5"))
