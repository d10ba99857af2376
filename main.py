"""tf_asp demo: prune a "pretrained" convnet to 2:4, fine-tune it, export it.

The convnet's random initialization stands in for pretrained weights. The
demo wraps SGD with `tf_asp.AspOptimizerWrapperV2` (which permutes channels
and prunes every eligible kernel to 2:4), fine-tunes for a few steps on
generated data, checks the 2:4 structure, and exports a SavedModel that
`tf.saved_model.load` (or `tftrt_infer.py`) can serve, and optionally a
`.keras` file that keeps the optimizer and its masks for more fine-tuning.

    python main.py --steps 20 --batch_size 32 --output_dir ./exported_model
    python main.py --keras_file pruned.keras   # also save the .keras file
"""

import argparse
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tf_asp

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def build_model():
    """A small convnet with Conv2D, BatchNormalization, pooling and Dense."""
    inputs = keras.Input(INPUT_SHAPE, name="image")
    x = inputs
    for filters in (32, 64, 64):
        x = keras.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = keras.layers.BatchNormalization()(x)
        x = keras.layers.ReLU()(x)
        x = keras.layers.MaxPooling2D()(x)
    x = keras.layers.GlobalAveragePooling2D()(x)
    x = keras.layers.Dense(128, activation="relu")(x)
    outputs = keras.layers.Dense(NUM_CLASSES, name="logits")(x)
    return keras.Model(inputs, outputs, name="toy_convnet")


def generated_data(num_samples, seed):
    """Random images whose label is the brightest of 10 image regions."""
    rng = np.random.default_rng(seed)
    images = rng.random((num_samples,) + INPUT_SHAPE, dtype=np.float32)
    regions = images[:, :, : NUM_CLASSES * 3].mean(axis=(1, 3))
    regions = regions.reshape(num_samples, NUM_CLASSES, 3).mean(axis=-1)
    return images, regions.argmax(axis=-1)


def run(
    steps=20,
    batch_size=32,
    output_dir="./exported_model",
    seed=0,
    permute=True,
    plot_to_file=None,
    keras_file=None,
):
    """Prunes, fine-tunes and exports the demo model; returns it."""
    keras.utils.set_random_seed(seed)
    model = build_model()
    optimizer = tf_asp.AspOptimizerWrapperV2(
        keras.optimizers.SGD(learning_rate=0.05, momentum=0.9),
        model,
        padding=True,
        permute=permute,
        plot_to_file=plot_to_file,
    )
    if optimizer.permutation_summary is not None:
        print(optimizer.permutation_summary)
    model.compile(
        optimizer=optimizer,
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    images, labels = generated_data(steps * batch_size, seed)
    model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=2)

    pruned, total = tf_asp.check_pruned_layers(model, show_all=True, check_structured=True)
    print(f"2:4 sparse layers: {pruned} of {total} GEMM layers")
    if output_dir:
        model.export(output_dir, verbose=False)
        print(f"Exported the pruned model to {output_dir}")
    if keras_file:
        model.save(keras_file)
        print(f"Saved the model and its optimizer (with the masks) to {keras_file}")
    return model


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=20, help="fine-tuning steps")
    parser.add_argument("--batch_size", type=int, default=32)
    parser.add_argument("--output_dir", default="./exported_model")
    parser.add_argument(
        "--keras_file", default=None, help="also save the model and its masks to this .keras file"
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--no_permute", action="store_true", help="prune without permuting")
    parser.add_argument(
        "--plot_to_file", default=None, help="draw the op graph (.png/.pdf/.svg/.dot)"
    )
    parser.add_argument("--verbosity", default="WARNING", help="tf_asp log level, e.g. INFO")
    args = parser.parse_args(argv)
    if args.steps < 1 or args.batch_size < 1:
        parser.error("--steps and --batch_size must be positive")
    tf_asp.set_verbosity(args.verbosity)
    run(
        steps=args.steps,
        batch_size=args.batch_size,
        output_dir=args.output_dir,
        seed=args.seed,
        permute=not args.no_permute,
        plot_to_file=args.plot_to_file,
        keras_file=args.keras_file,
    )


if __name__ == "__main__":
    main()
