"""The sparsity report and its command line check any N:M pattern."""

import keras
import pytest
from helpers import run_command
from helpers import small_mlp

import tf_asp

pytestmark = pytest.mark.usefixtures("fresh_keras")


def test_the_report_checks_the_pattern_it_is_given():
    model = small_mlp()
    tf_asp.prune_model(model, pattern="1:4", permute=False)
    one_four = tf_asp.sparsity_report(model, print_table=False, pattern="1:4")
    assert one_four.pattern == "1:4"
    assert all(row.has_pattern and row.pattern == "1:4" for row in one_four.rows)
    assert "2 of 2 kernels are 1:4" in one_four.summary()
    one_eight = tf_asp.sparsity_report(model, print_table=False, pattern="1:8")
    assert not any(row.has_pattern for row in one_eight.rows)
    default = tf_asp.sparsity_report(model, print_table=False)
    assert all(row.is_2to4 and row.has_pattern for row in default.rows)


def test_the_command_line_takes_a_pattern(tmp_path):
    model = small_mlp()
    tf_asp.prune_model(model, pattern="4:8", permute=False)
    model.compile(loss="mse")
    path = tmp_path / "pruned.keras"
    model.save(path)
    result = run_command("-m", "tf_asp.report", path, "--pattern", "4:8")
    assert result.returncode == 0, result.stderr
    assert "4:8" in result.stdout and "2 of 2 kernels are 4:8" in result.stdout
    result = run_command("-m", "tf_asp.report", path, "--pattern", "4/8")
    assert result.returncode == 1 and "--pattern" in result.stderr and "not N:M" in result.stderr


def test_check_pruned_layers_prints_the_pattern(capsys):
    model = keras.Sequential([keras.Input((32,)), keras.layers.Dense(16, name="d")])
    tf_asp.prune_model(model, pattern="2:8", permute=False)
    assert tf_asp.check_pruned_layers(model, show_all=True, pattern="2:8") == (1, 1)
    assert "2:8=yes" in capsys.readouterr().out
    assert tf_asp.check_pruned_layers(model, check_structured=True, pattern="1:8") == (0, 1)
    with pytest.raises(ValueError, match="Transposable masks are 2:4"):
        tf_asp.check_pruned_layers(model, pattern="2:8", transposable=True)
