"""One-shot masks on models trained here: accuracy by criterion and permutation,
transposable against 1-D masks, and the model-level search time per pattern.

Pre-trains two small models to convergence on scikit-learn's handwritten
digits (`load_digits`: 1797 8x8 images, 10 classes, shipped with the
package; 1347 to train, 450 to test, stratified): a convnet (four 3x3
convolutions, 32-64 channels) and a transformer (the 8 pixel rows as 8
tokens, 2 post-norm blocks of width 64, 4 heads, feed-forward 128). Then,
from the same trained weights each time:

- `accuracy`: `tf_asp.prune_model` 2:4 with the magnitude, activation or
  learned criterion (256 training images as calibration data; learned: 100
  steps distilled from the dense model), without and with
  permutation: test accuracy and agreement with the dense model's
  predictions before fine-tuning, and test accuracy after the same short
  fine-tune (a wrapper with `permute=False`, Adam 1e-4, 3 epochs);
- `transposable`: the share of |w| that 1-D and transposable (best,
  greedy) 2:4 masks keep, the mask time, and the test accuracy before and
  after the fine-tune;
- `patterns`: per pattern (1:2, 2:4, 1:4, 4:8, 2:8, 8:16), `prune_model`
  with permutation: search time, whole call, mean efficacy, share of |w|
  kept and test accuracy before fine-tuning. `--encoder` adds the 6-block
  BERT-style encoder of `permute_model.py` (random weights: search time
  only), and the time learned 2:4 masks take on it (`--learned-steps`
  steps distilled from the dense model on 256 random token sequences,
  without permutation).

    pip install ".[bench]"          # scikit-learn, for its digits
    python benchmarks/masks.py
    python benchmarks/masks.py --tables patterns --encoder
    python benchmarks/masks.py --models --encoder learned   # the encoder only
"""

import argparse
import os
import platform
import time

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np
from keras import layers
from machine import cpu_name

import tf_asp

CALIBRATION_SAMPLES = 256
FINE_TUNE_EPOCHS = 3
PATTERNS = ("1:2", "2:4", "1:4", "4:8", "2:8", "8:16")


def digits():
    """(x_train, y_train, x_test, y_test): 8x8x1 images in [0, 1]."""
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    data = load_digits()
    x = (data.images / 16.0).astype("float32")[..., None]
    return train_test_split(x, data.target, test_size=0.25, random_state=0, stratify=data.target)


def convnet():
    inputs = keras.Input((8, 8, 1))
    x = layers.Conv2D(32, 3, padding="same", name="conv_1")(inputs)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Conv2D(64, 3, padding="same", name="conv_2")(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.MaxPooling2D()(x)
    x = layers.Conv2D(64, 3, padding="same", name="conv_3")(x)
    x = layers.ReLU()(layers.BatchNormalization()(x))
    x = layers.Conv2D(64, 3, padding="same", name="conv_4")(x)
    x = layers.GlobalAveragePooling2D()(layers.ReLU()(x))
    x = layers.Dense(64, activation="relu", name="dense")(x)
    return keras.Model(inputs, layers.Dense(10, name="classifier")(x), name="convnet")


class PositionEmbedding(layers.Layer):
    def build(self, input_shape):
        self.positions = self.add_weight(shape=tuple(input_shape[1:]), name="positions")

    def call(self, x):
        return x + self.positions


def transformer(width=64, heads=4, ffn=128, blocks=2):
    inputs = keras.Input((8, 8, 1))
    h = layers.Dense(width, name="embed")(layers.Reshape((8, 8))(inputs))
    h = PositionEmbedding(name="positions")(h)
    for index in range(blocks):
        attention = layers.MultiHeadAttention(heads, width // heads, name=f"attention_{index}")
        h = layers.LayerNormalization()(h + attention(h, h))
        f = layers.Dense(ffn, activation="gelu", name=f"ffn_{index}_in")(h)
        h = layers.LayerNormalization()(h + layers.Dense(width, name=f"ffn_{index}_out")(f))
    pooled = layers.GlobalAveragePooling1D()(h)
    return keras.Model(inputs, layers.Dense(10, name="classifier")(pooled), name="transformer")


MODELS = {"convnet": (convnet, 40), "transformer": (transformer, 80)}


def pretrain(name, data):
    """The model trained to convergence (Adam, cosine decay), and its weights."""
    build, epochs = MODELS[name]
    keras.utils.set_random_seed(0)
    model = build()
    x_train, x_test, y_train, y_test = data
    steps = epochs * int(np.ceil(len(x_train) / 32))
    schedule = keras.optimizers.schedules.CosineDecay(2e-3, steps)
    compile_model(model, keras.optimizers.Adam(schedule))
    model.fit(x_train, y_train, batch_size=32, epochs=epochs, verbose=0)
    return model.get_weights()


def compile_model(model, optimizer):
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )


def quiet():
    """No progress bars inside the tables; `clear_session` turns them back on."""
    keras.utils.disable_interactive_logging()


def fresh(name, weights):
    keras.backend.clear_session()
    quiet()
    keras.utils.set_random_seed(0)
    model = MODELS[name][0]()
    model.set_weights(weights)
    return model


def accuracy(model, x, y):
    return float(np.mean(np.argmax(predict(model, x), axis=-1) == y))


def predict(model, x):
    return np.asarray(model.predict(x, batch_size=256, verbose=0))


def fine_tune(model, data, **wrapper_options):
    """The same short fine-tune for every variant; the pruned zeros stay."""
    x_train, x_test, y_train, y_test = data
    keras.utils.set_random_seed(1)
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.Adam(1e-4), model, permute=False, **wrapper_options
    )
    compile_model(model, optimizer)
    model.fit(x_train, y_train, batch_size=32, epochs=FINE_TUNE_EPOCHS, verbose=0)
    return accuracy(model, x_test, y_test)


def kept_share(summary):
    kept = sum(k.kept for k in summary.kernels)
    return kept / sum(k.total for k in summary.kernels)


def accuracy_table(name, weights, data):
    x_train, x_test, y_train, y_test = data
    dense = fresh(name, weights)
    reference = np.argmax(predict(dense, x_test), axis=-1)
    print(
        f"\n{name}: dense test accuracy {accuracy(dense, x_test, y_test):.2%}; "
        f"one-shot 2:4, then {FINE_TUNE_EPOCHS} epochs of fine-tuning"
    )
    print(
        f"{'criterion':<11} {'permute':<7} {'kept |w|':>8} {'accuracy':>8} {'agrees':>7} "
        f"{'fine-tuned':>10} {'prune s':>7}"
    )
    calibration = x_train[:CALIBRATION_SAMPLES]
    for criterion in ("magnitude", "activation", "learned"):
        for permute in (False, True):
            model = fresh(name, weights)
            before = kernel_magnitudes(model)
            start = time.perf_counter()
            tf_asp.prune_model(
                model,
                criterion=criterion,
                calibration_data=None if criterion == "magnitude" else calibration,
                permute=permute,
                search_device="CPU",
            )
            seconds = time.perf_counter() - start
            kept = kernel_magnitudes(model) / before
            predicted = np.argmax(predict(model, x_test), axis=-1)
            print(
                f"{criterion:<11} {str(permute):<7} {kept:8.1%} "
                f"{np.mean(predicted == y_test):8.2%} {np.mean(predicted == reference):7.2%} "
                f"{fine_tune(model, data):10.2%} {seconds:7.1f}",
                flush=True,
            )


def kernel_magnitudes(model):
    """The sum of |w| over the kernels tf_asp prunes."""
    from tf_asp.pruning import prunable_kernels

    return sum(float(np.abs(k.variable.numpy()).sum()) for k in prunable_kernels(model).values())


def transposable_table(name, weights, data):
    x_train, x_test, y_train, y_test = data
    print(f"\n{name}: 2:4 masks, magnitude, permuted; share of |w| kept")
    print(
        f"{'masks':<19} {'kept |w|':>8} {'1-D kept':>8} {'mask s':>6} {'accuracy':>8} "
        f"{'fine-tuned':>10}"
    )
    for method in (False, "best", "greedy"):
        model = fresh(name, weights)
        summary = tf_asp.prune_model(model, transposable=method, search_device="CPU")
        mask_seconds = summary.duration - summary.permutation.duration
        one_d = sum(k.kept_1d for k in summary.kernels) / sum(k.total for k in summary.kernels)
        label = f"transposable {method}" if method else "1-D"
        print(
            f"{label:<19} {kept_share(summary):8.1%} {one_d:8.1%} {mask_seconds:6.2f} "
            f"{accuracy(model, x_test, y_test):8.2%} "
            f"{fine_tune(model, data, transposable=method):10.2%}",
            flush=True,
        )


def patterns_table(name, weights, data):
    x_test, y_test = (None, None) if data is None else (data[1], data[3])
    print(f"\n{name}: prune_model(pattern=...) with permutation, magnitude")
    print(
        f"{'pattern':<7} {'search s':>8} {'call s':>7} {'groups':>6} {'efficacy':>8} "
        f"{'kept |w|':>8} {'accuracy':>8} {'load':>4}"
    )
    for pattern in PATTERNS:
        model = fresh(name, weights) if weights is not None else build_encoder()
        load = os.getloadavg()[0]
        start = time.perf_counter()
        summary = tf_asp.prune_model(model, pattern=pattern, search_device="CPU")
        seconds = time.perf_counter() - start
        groups = summary.permutation.groups
        search = sum(g.duration for g in groups)
        efficacy = np.mean([g.efficacy for g in groups]) if groups else 0.0
        score = "-" if x_test is None else f"{accuracy(model, x_test, y_test):.2%}"
        print(
            f"{pattern:<7} {search:8.2f} {seconds:7.1f} {len(groups):6d} {efficacy:8.1f} "
            f"{kept_share(summary):8.1%} {score:>8} {(load + os.getloadavg()[0]) / 2:4.1f}",
            flush=True,
        )


def learned_encoder_table(steps):
    """Times `criterion="learned"` on the encoder: the cost of a large model."""
    model = build_encoder()
    vocabulary = model.get_layer("embedding").tokens.input_dim
    ids = np.random.default_rng(0).integers(
        0, vocabulary, size=(CALIBRATION_SAMPLES, model.input_shape[1]), dtype="int32"
    )
    print(f"\nEncoder: prune_model(criterion='learned', learned_steps={steps}), no permutation")
    print(
        f"{'steps':>5} {'call s':>7} {'s/step':>6} {'loss':>9} {'magnitude':>9} "
        f"{'best step':>9} {'kept |w|':>8} {'load':>4}"
    )
    load = os.getloadavg()[0]
    start = time.perf_counter()
    summary = tf_asp.prune_model(
        model, criterion="learned", calibration_data=ids, permute=False, learned_steps=steps
    )
    seconds = time.perf_counter() - start
    result = summary.learned
    print(
        f"{steps:5d} {seconds:7.1f} {seconds / max(steps, 1):6.2f} {result.loss:9.4g} "
        f"{result.magnitude_loss:9.4g} {result.best_step:9d} {kept_share(summary):8.1%} "
        f"{(load + os.getloadavg()[0]) / 2:4.1f}",
        flush=True,
    )


def build_encoder():
    from permute_model import build

    model = build("Encoder")
    quiet()
    return model


TABLES = {
    "accuracy": accuracy_table,
    "transposable": transposable_table,
    "patterns": patterns_table,
}
ENCODER_TABLES = ("patterns", "learned")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--models",
        nargs="*",
        default=sorted(MODELS),
        choices=sorted(MODELS),
        help="digits models to pre-train and measure (none: only --encoder)",
    )
    parser.add_argument(
        "--tables",
        nargs="+",
        default=list(TABLES),
        choices=list(TABLES),
    )
    parser.add_argument(
        "--encoder",
        nargs="*",
        choices=ENCODER_TABLES,
        help="also time these on the 6-block encoder (all when none is named)",
    )
    parser.add_argument(
        "--learned-steps", type=int, default=100, help="learned-mask steps on the encoder"
    )
    args = parser.parse_args()
    quiet()
    print(
        f"machine: {cpu_name()}, {os.cpu_count()} cores, {platform.system()}, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    data = digits() if args.models else None
    for name in args.models:
        start = time.perf_counter()
        weights = pretrain(name, data)
        trained = fresh(name, weights)
        print(
            f"\n{name}: pre-trained in {time.perf_counter() - start:.0f} s, train accuracy "
            f"{accuracy(trained, data[0], data[2]):.2%}, test accuracy "
            f"{accuracy(trained, data[1], data[3]):.2%}"
        )
        for table in args.tables:
            TABLES[table](name, weights, data)
    # --encoder alone: every encoder table; no --encoder: none.
    encoder_tables = ENCODER_TABLES if args.encoder == [] else (args.encoder or ())
    if "patterns" in encoder_tables:
        patterns_table("Encoder", None, None)
    if "learned" in encoder_tables:
        learned_encoder_table(args.learned_steps)


if __name__ == "__main__":
    main()
