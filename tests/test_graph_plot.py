"""The op-graph plot: colours, group IDs (and their segments), permuted dims and
sparsity marks."""

import re

import keras
import pytest
from helpers import encoder

from tf_asp.graph.groups import find_groups
from tf_asp.graph.plot import plot_graph
from tf_asp.graph.trace import trace_model

pytestmark = pytest.mark.usefixtures("fresh_keras")

layers = keras.layers


def small_model():
    x = keras.Input((8, 8, 16))
    y = layers.Conv2D(32, 3, padding="same", name="conv1")(x)
    y = layers.BatchNormalization(name="bn")(y)
    y = layers.ReLU(name="relu")(y)
    y = layers.Conv2D(32, 3, padding="same", name="conv2")(y)
    y = layers.Lambda(lambda t: keras.ops.flip(t, axis=-1), name="flip")(y)
    y = layers.GlobalAveragePooling2D()(y)
    return keras.Model(x, layers.Dense(16, name="head")(y))


def plot(model, path):
    graph = trace_model(model)
    groups, roles = find_groups(graph)
    return plot_graph(graph, roles, groups, path), groups


def node_label(dot_text, op_name):
    match = re.search(rf'"{re.escape(op_name)}" \[label="([^"]*)", fillcolor=(\w+)', dot_text)
    assert match, f"no node {op_name} in the plot"
    return match.group(1), match.group(2)


def test_small_model_plot_colours_and_labels(tmp_path):
    written, groups = plot(small_model(), tmp_path / "model.dot")
    text = open(written).read()
    (group,) = [g for g in groups if g.skip_reason is None]

    # conv2: C-permuted by the group, not K-permuted (a flip follows), pruned.
    label, colour = node_label(text, "functional_1/conv2_1/convolution")
    assert colour == "palegreen" and label.endswith(f"#{group.id} [C] S")
    # conv1: K-permuted only; its 16 input channels come from the model input.
    label, colour = node_label(text, "functional_1/conv1_1/convolution")
    assert colour == "palegreen" and label.endswith(f"#{group.id} [K] S")
    label, colour = node_label(text, "functional_1/bn_1/batchnorm/mul_1")
    assert colour == "orange" and label.endswith(f"#{group.id} [K]")
    label, colour = node_label(text, "functional_1/relu_1/Relu")
    assert colour == "lightyellow" and label.endswith(f"#{group.id}")
    label, colour = node_label(text, "functional_1/flip_1/ReverseV2")
    assert colour == "tomato"
    # head reads channels behind the flip: not permuted, but still pruned.
    label, colour = node_label(text, "functional_1/head_1/MatMul")
    assert colour == "palegreen" and label.endswith("\\nS")
    # Skip-list ops are hidden; a legend explains the colours.
    assert "ReadVariableOp" not in text and "Placeholder" not in text
    assert "yellow: passes the permutation through" in text


def test_small_model_png(tmp_path):
    written, _ = plot(small_model(), tmp_path / "model.png")
    with open(written, "rb") as f:
        assert f.read(8) == b"\x89PNG\r\n\x1a\n"


def test_missing_dot_program_still_writes_the_dot_file(tmp_path, monkeypatch):
    monkeypatch.setattr("shutil.which", lambda name: None)
    with pytest.warns(UserWarning, match="graphviz program `dot` is not installed"):
        written, _ = plot(small_model(), tmp_path / "model.svg")
    assert written == str(tmp_path / "model.svg") + ".dot"
    assert "palegreen" in open(written).read()


def test_unknown_extension_is_refused(tmp_path):
    with pytest.raises(ValueError, match=r"\.png, \.pdf, \.svg, \.dot"):
        plot(small_model(), tmp_path / "model.jpg")


@pytest.mark.slow
def test_resnet50_plot(tmp_path):
    model = keras.applications.ResNet50(weights=None)
    written, groups = plot(model, tmp_path / "resnet50.dot")
    text = open(written).read()
    assert text.count("[K,C] S") >= 40  # 1x1 and 3x3 convs inside blocks
    assert "conv2_block1_1_conv_1/convolution" in text
    label, colour = node_label(text, "resnet50_1/conv2_block1_1_conv_1/convolution")
    assert colour == "palegreen" and "[K,C] S" in label
    for colour in ("palegreen", "orange", "lightyellow"):
        assert f"fillcolor={colour}" in text
    assert "conv1_conv_1/convolution" in text  # the stem is drawn ...
    label, _ = node_label(text, "resnet50_1/conv1_conv_1/convolution")
    assert "[K]" in label and "S" not in label.split("\\n")[-1]  # ... 3 channels: not pruned


def op_named(graph, kind, part):
    """The name of the one op of type `kind` whose name contains `part`."""
    (name,) = [op.name for op in graph.ops if op.type == kind and part in op.name]
    return name


def test_encoder_plot_shows_the_stream_and_the_heads(tmp_path):
    graph = trace_model(encoder(blocks=1, vocabulary=100))
    groups, roles = find_groups(graph)
    text = open(plot_graph(graph, roles, groups, tmp_path / "encoder.dot")).read()
    stream = [g for g in groups if "head" in g.consumer_names][0]
    heads = [g for g in groups if "attention_output" in g.consumer_names][0]

    # value: reads the stream (C), writes 4 heads (K); attention_output the reverse.
    label, colour = node_label(text, op_named(graph, "BatchMatMulV2", "value"))
    assert colour == "palegreen" and label.endswith(f"#{heads.id}(4),{stream.id} [K,C] S")
    label, _ = node_label(text, op_named(graph, "BatchMatMulV2", "attention_output"))
    assert label.endswith(f"#{stream.id},{heads.id}(4) [K,C] S")
    label, _ = node_label(text, op_named(graph, "BatchMatMulV2", "query"))
    assert label.endswith(f"#{stream.id} [C] S")
    # Q.K stops a permutation; the weighted sum of V carries the heads.
    _, colour = node_label(text, op_named(graph, "Einsum", "einsum/"))
    assert colour == "tomato"
    label, colour = node_label(text, op_named(graph, "Einsum", "einsum_1/"))
    assert colour == "lightyellow" and label.endswith(f"#{heads.id}(4)")
    # The embedding table and the position embedding move with the stream.
    for kind, part in [("GatherV2", "tokens"), ("AddV2", "positions")]:
        label, colour = node_label(text, op_named(graph, kind, part))
        assert colour == "orange" and label.endswith(f"#{stream.id} [K]")
    assert "a group of n segments" in text


def test_concatenation_plot_shows_the_segments(tmp_path):
    x = keras.Input((8, 8, 16))
    a = layers.Conv2D(16, 1, name="a")(x)
    b = layers.Conv2D(32, 1, name="b")(x)
    y = layers.Conv2D(32, 1, name="reader")(layers.Concatenate(name="joined")([a, b]))
    graph = trace_model(keras.Model(x, layers.Dense(16)(layers.GlobalAveragePooling2D()(y))))
    groups, roles = find_groups(graph)
    text = open(plot_graph(graph, roles, groups, tmp_path / "concat.dot")).read()
    (group,) = [g for g in groups if "reader" in g.consumer_names]
    label, colour = node_label(text, op_named(graph, "ConcatV2", "joined"))
    assert colour == "lightyellow" and label.endswith(f"#{group.id}(2)")
