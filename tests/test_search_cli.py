"""`python -m tf_asp.search`: the published ChannelPermutations command line.

Every start of the command imports TensorFlow (seconds), so three real
processes run side by side once per module and the other checks call
`main(argv)` in this process.
"""

import csv
import dataclasses
import os
import subprocess
import sys

import numpy as np
import pytest

from tf_asp import search
from tf_asp.search import as_search_matrix
from tf_asp.search import metrics
from tf_asp.search.__main__ import check_permutation
from tf_asp.search.__main__ import main

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def conv_kernel():
    """A TensorFlow Conv2D kernel (H, W, C, K) = (3, 3, 16, 8): 72 rows, 16 channels."""
    return np.random.default_rng(0).standard_normal((3, 3, 16, 8))


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """The command's output for three command lines, started together."""
    folder = tmp_path_factory.mktemp("cli")
    np.save(folder / "conv.npy", conv_kernel())
    commands = {
        "default": ["optimize_stripe_groups,8,0", "channel_swap,0"],
        "conv": [
            "--infile",
            str(folder / "conv.npy"),
            "--print_permutation",
            "1",
            "--check_permutation",
            "1",
            "--intermediate_steps",
            "3",
            "optimize_stripe_groups,8,0",
        ],
        "missing": ["--infile", str(folder / "missing.npy"), "optimize_stripe_groups,8,0"],
    }
    env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3")
    processes = {
        name: subprocess.Popen(
            [sys.executable, "-m", "tf_asp.search", *arguments],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for name, arguments in commands.items()
    }
    results = {}
    for name, process in processes.items():
        stdout, stderr = process.communicate(timeout=180)
        results[name] = subprocess.CompletedProcess(
            process.args, process.returncode, stdout, stderr
        )
    return results


def table(stdout):
    """{row name: [cells]} of a pretty table (names hold commas) or a CSV one."""
    rows = {}
    for line in stdout.splitlines():
        if line.startswith("(") or line.startswith("[") or line.startswith("permutation check"):
            continue
        if line.startswith('"'):  # CSV quotes the names that hold commas
            name, *cells = next(csv.reader([line]))
        else:
            name, *cells = line.rsplit(",", 3)
        rows[name.strip()] = [c.strip() for c in cells]
    return rows


# --- real processes ---------------------------------------------------------------


def test_default_matrix_prints_the_published_table(runs):
    result = runs["default"]
    assert result.returncode == 0, result.stderr
    lines = result.stdout.splitlines()
    header = [c.strip() for c in lines[0].split(",")]
    assert header == ["strategy", "magnitude", "efficacy", "duration"]
    rows = table(result.stdout)
    assert rows["unpruned"][0] == "4083.169"
    assert rows["unstructured"][0] == "3060.238"
    assert rows["50% rows"][:2] == ["3042.332", "100.0"]
    assert rows["default 2:4"][:2] == ["2852.377", "0.0"]
    assert rows["optimize_stripe_groups,8,0"][:2] == ["2919.759", "35.5"]
    assert float(rows["channel_swap,0"][1]) >= 32.05
    assert list(rows) == [
        "strategy",
        "unpruned",
        "unstructured",
        "50% rows",
        "default 2:4",
        "optimize_stripe_groups,8,0",
        "channel_swap,0",
    ]


def test_pretty_table_aligns_its_columns(runs):
    lines = runs["default"].stdout.splitlines()
    assert len({line.rindex(",") for line in lines}) == 1
    assert all(line[35] == "," for line in lines)


def test_conv_kernel_file_is_searched_over_its_input_channels(runs):
    result = runs["conv"]
    assert result.returncode == 0, result.stderr
    matrix = as_search_matrix(conv_kernel())
    assert matrix.shape == (72, 16)
    rows = table(result.stdout)
    assert rows["unpruned"][0] == f"{np.abs(matrix).sum():.3f}"
    assert rows["default 2:4"][0] == f"{metrics.kept_magnitude(matrix):.3f}"
    assert rows["50% rows"][0] == f"{metrics.rows_half_magnitude(matrix):.3f}"


def test_printed_permutation_is_checked_and_keeps_the_reported_magnitude(runs):
    stdout = runs["conv"].stdout
    matrix = as_search_matrix(conv_kernel())
    printed = [line for line in stdout.splitlines() if line.startswith("[")]
    assert len(printed) == 1
    permutation = [int(c) for c in printed[0].strip("[]").split(",")]
    assert sorted(permutation) == list(range(16))
    reported = table(stdout)["optimize_stripe_groups,8,0"][0]
    assert f"{metrics.kept_magnitude(matrix, permutation):.3f}" == reported
    assert "permutation check optimize_stripe_groups,8,0: passed" in stdout


def test_permutation_check_fails_a_wrong_order_or_magnitude():
    matrix = np.random.RandomState(1).rand(8, 16)
    good = search.optimize_stripe_groups(matrix, 8, 0)
    assert check_permutation(matrix, good)
    assert not check_permutation(matrix, dataclasses.replace(good, magnitude=good.magnitude + 0.01))
    duplicated = good.permutation.copy()
    duplicated[0] = duplicated[1]
    assert not check_permutation(matrix, dataclasses.replace(good, permutation=duplicated))


def test_intermediate_steps_walk_from_identity_to_the_result(runs):
    stdout = runs["conv"].stdout
    matrix = as_search_matrix(conv_kernel())
    steps = [line for line in stdout.splitlines() if line.startswith("(")]
    assert len(steps) == 3
    identity = metrics.kept_magnitude(matrix)
    final = float(table(stdout)["optimize_stripe_groups,8,0"][0])
    previous = identity
    for line in steps:
        kept, permutation = eval(line)
        assert sorted(permutation) == list(range(16))
        assert kept == pytest.approx(metrics.kept_magnitude(matrix, permutation))
        assert previous - 1e-9 <= kept <= final + 1e-3
        previous = kept


def test_missing_file_is_a_one_line_error_with_status_2(runs):
    result = runs["missing"]
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if "error" in line.lower()]
    assert len(errors) == 1
    assert errors[0].startswith("error: Cannot read --infile") and "missing.npy" in errors[0]
    assert result.stdout == ""


# --- main() in this process --------------------------------------------------------


def test_csv_output_has_no_padding(capsys):
    assert main(["--pretty_print", "0", "optimize_stripe_groups,8,0"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0] == "strategy,magnitude,efficacy,duration"
    assert lines[1] == "unpruned,4083.169,-,-"
    assert lines[4] == "default 2:4,2852.377,0.0,0.000"
    assert lines[5].startswith('"optimize_stripe_groups,8,0",2919.759,35.5,')
    assert all(len(row) == 4 for row in csv.reader(lines))
    assert not any(" " in line.replace("default 2:4", "").replace("50% rows", "") for line in lines)


def test_random_matrix_follows_channels_filters_and_seed(capsys):
    assert (
        main(
            [
                "--channels",
                "16",
                "--filters",
                "8",
                "--seed",
                "3",
                "--pretty_print",
                "0",
                "channel_swap,0",
            ]
        )
        == 0
    )
    rows = table(capsys.readouterr().out)
    matrix = np.random.RandomState(3).rand(8, 16)
    assert rows["unpruned"][0] == f"{matrix.sum():.3f}"
    assert rows["default 2:4"][0] == f"{metrics.kept_magnitude(matrix):.3f}"


def test_negative_unstructured_prints_the_lossless_sparsity(capsys):
    assert (
        main(
            [
                "--channels",
                "8",
                "--filters",
                "8",
                "--unstructured",
                "-1",
                "optimize_stripe_groups,8,0",
                "random,20",
            ]
        )
        == 0
    )
    rows = table(capsys.readouterr().out)
    for strategy in ("optimize_stripe_groups,8,0", "random,20"):
        magnitude, efficacy, sparsity = rows[strategy]
        assert (magnitude, efficacy) == ("-", "-")
        assert 0.5 <= float(sparsity) <= 1.0


def test_unstructured_fraction_prunes_before_the_search(capsys):
    assert (
        main(
            [
                "--channels",
                "16",
                "--filters",
                "8",
                "--unstructured",
                "0.5",
                "--pretty_print",
                "0",
                "exhaustive",
            ]
        )
        == 0
    )
    rows = table(capsys.readouterr().out)
    matrix = np.random.RandomState(1).rand(8, 16)
    assert rows["unpruned"][0] == f"{metrics.unstructured_magnitude(matrix, 0.5):.3f}"


def test_two_dimensional_file_is_taken_as_rows_by_channels(tmp_path, capsys):
    matrix = np.random.default_rng(1).standard_normal((5, 12))
    np.save(tmp_path / "matrix.npy", matrix)
    infile = str(tmp_path / "matrix.npy")
    assert main(["--infile", infile, "--pretty_print", "0", "exhaustive"]) == 0
    rows = table(capsys.readouterr().out)
    assert rows["unpruned"][0] == f"{np.abs(matrix).sum():.3f}"
    assert rows["default 2:4"][0] == f"{metrics.kept_magnitude(matrix):.3f}"
    assert float(rows["exhaustive"][0]) >= float(rows["default 2:4"][0])


def test_matrix_with_10_columns_is_a_one_line_error_with_status_2(tmp_path, capsys):
    np.save(tmp_path / "ten.npy", np.ones((4, 10)))
    assert main(["--infile", str(tmp_path / "ten.npy"), "exhaustive"]) == 2
    captured = capsys.readouterr()
    assert captured.err == (
        "error: The input matrix has 10 columns; 2:4 sparsity needs a multiple of 4.\n"
    )
    assert captured.out == ""


@pytest.mark.parametrize("arguments", [["annealing,3"], ["optimize_stripe_groups,8,x"], []])
def test_unknown_strategy_is_a_usage_error(arguments, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(arguments)
    assert exit_info.value.code == 2
    err = capsys.readouterr().err
    assert err.startswith("usage: python -m tf_asp.search")
    if arguments:
        assert "argument strategy:" in err


def test_bad_flag_value_is_a_usage_error(capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--pretty_print", "maybe", "exhaustive"])
    assert exit_info.value.code == 2
    assert "expected 1 or 0" in capsys.readouterr().err


def test_gpu_flag_and_device_names_pick_the_backend(capsys):
    for device in (["--gpu", "0"], ["--device", "numpy"], ["--device", "cpu"]):
        assert main([*device, "--pretty_print", "0", "optimize_stripe_groups,8,0"]) == 0
        assert table(capsys.readouterr().out)["optimize_stripe_groups,8,0"][0] == "2919.759"


def test_unknown_device_is_a_one_line_error(capsys):
    assert main(["--device", "TPU", "optimize_stripe_groups,8,0"]) == 2
    assert capsys.readouterr().err.startswith("error: device must be one of")


def test_time_limit_is_noted_in_the_table(capsys):
    assert (
        main(
            [
                "--channels",
                "1024",
                "--filters",
                "64",
                "--time_limit",
                "0.05",
                "--device",
                "CPU",
                "--pretty_print",
                "0",
                "optimize_stripe_groups,8,1000000",
            ]
        )
        == 0
    )
    duration = table(capsys.readouterr().out)["optimize_stripe_groups,8,1000000"][2]
    assert duration.endswith("(time limit)")


# --- --pattern ------------------------------------------------------------------------


def test_pattern_measures_every_row_for_that_pattern(capsys):
    arguments = ["--pattern", "1:4", "--pretty_print", "0", "--check_permutation", "1"]
    assert main([*arguments, "optimize_stripe_groups,8,0", "channel_swap,0"]) == 0
    out = capsys.readouterr().out
    rows = table(out)
    matrix = np.random.RandomState(1).rand(128, 64)
    assert list(rows)[1:5] == ["unpruned", "unstructured", "25% rows", "default 1:4"]
    assert rows["unstructured"][0] == f"{metrics.unstructured_magnitude(matrix, 0.75):.3f}"
    assert rows["25% rows"][0] == f"{metrics.row_bound_magnitude(matrix, '1:4'):.3f}"
    assert rows["default 1:4"][0] == f"{metrics.kept_magnitude(matrix, pattern='1:4'):.3f}"
    expected = search.optimize_stripe_groups(matrix, 8, 0, pattern="1:4", seed=1)
    assert rows["optimize_stripe_groups,8,0"][:2] == [
        f"{expected.magnitude:.3f}",
        f"{expected.efficacy:.1f}",
    ]
    assert "permutation check channel_swap,0: passed" in out


def test_pattern_default_strategy_window_follows_the_pattern(capsys):
    argv = ["--pattern", "4:8", "--channels", "32", "--filters", "8", "--pretty_print", "0"]
    assert main([*argv, "optimize_stripe_groups,16,0", "channel_swap,0"]) == 0
    rows = table(capsys.readouterr().out)
    assert "default 4:8" in rows and "50% rows" in rows
    assert float(rows["optimize_stripe_groups,16,0"][1]) > 0


@pytest.mark.parametrize("text", ["3:6", "4:4", "2/4", "0:8"])
def test_bad_pattern_is_a_usage_error(text, capsys):
    with pytest.raises(SystemExit) as exit_info:
        main(["--pattern", text, "channel_swap,0"])
    assert exit_info.value.code == 2
    assert "argument --pattern:" in capsys.readouterr().err


@pytest.mark.parametrize(
    "arguments, message",
    [
        (["--pattern", "8:16", "channel_swap,0", "optimize_stripe_groups,8,0"], "Use channel_swap"),
        (["--pattern", "4:8", "optimize_stripe_groups,8,0"], "window must be 16 columns"),
        (["--pattern", "8:16", "--channels", "24", "channel_swap,0"], "multiple of 16"),
    ],
)
def test_a_strategy_or_matrix_the_pattern_cannot_take_is_one_error_before_any_row(
    arguments, message, capsys
):
    assert main(arguments) == 2
    captured = capsys.readouterr()
    assert captured.out == ""
    assert captured.err.startswith("error: ") and message in captured.err
    assert len(captured.err.splitlines()) == 1
