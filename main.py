"""tf_asp demo: prune a "pretrained" convnet to 2:4, fine-tune it, export it.

The convnet's random initialization stands in for pretrained weights. The
demo wraps SGD with `tf_asp.AspOptimizerWrapperV2` (which permutes channels
and prunes every eligible kernel to 2:4), fine-tunes for a few steps on
generated data, checks the 2:4 structure, and exports a SavedModel that
`tf.saved_model.load` (or `tftrt_infer.py`) can serve, and optionally a
`.keras` file that keeps the optimizer and its masks for more fine-tuning.

    python main.py --steps 20 --batch_size 32 --output_dir ./exported_model
    python main.py --keras_file pruned.keras   # also save the .keras file
    python main.py --keras2   # the same with tf_keras and a legacy optimizer
"""

import argparse
import contextlib
import io
import os

os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

import keras
import numpy as np

import tf_asp

INPUT_SHAPE = (32, 32, 3)
NUM_CLASSES = 10


def keras_api(keras2=False):
    """The Keras the demo builds with: `keras` (Keras 3) or `tf_keras`."""
    if keras2:
        import tf_keras

        return tf_keras
    return keras


def build_model(api=keras):
    """A small convnet with Conv2D, BatchNormalization, pooling and Dense."""
    inputs = api.Input(INPUT_SHAPE, name="image")
    x = inputs
    for filters in (32, 64, 64):
        x = api.layers.Conv2D(filters, 3, padding="same", use_bias=False)(x)
        x = api.layers.BatchNormalization()(x)
        x = api.layers.ReLU()(x)
        x = api.layers.MaxPooling2D()(x)
    x = api.layers.GlobalAveragePooling2D()(x)
    x = api.layers.Dense(128, activation="relu")(x)
    outputs = api.layers.Dense(NUM_CLASSES, name="logits")(x)
    return api.Model(inputs, outputs, name="toy_convnet")


def sgd(api=keras):
    """SGD with momentum; for tf_keras the legacy one of the original TF-ASP usage."""
    if api is keras:
        return keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    return api.optimizers.legacy.SGD(learning_rate=0.05, momentum=0.9)


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
    keras2=False,
):
    """Prunes, fine-tunes and exports the demo model; returns it.

    `keras2=True` builds it with tf_keras instead of Keras 3.
    """
    api = keras_api(keras2)
    api.utils.set_random_seed(seed)
    model = build_model(api)
    optimizer = tf_asp.AspOptimizerWrapperV2(
        sgd(api),
        model,
        padding=True,
        permute=permute,
        plot_to_file=plot_to_file,
    )
    if optimizer.permutation_summary is not None:
        print(optimizer.permutation_summary)
    model.compile(
        optimizer=optimizer,
        loss=api.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"],
    )
    images, labels = generated_data(steps * batch_size, seed)
    model.fit(images, labels, batch_size=batch_size, epochs=1, verbose=2)

    pruned, total = tf_asp.check_pruned_layers(model, show_all=True, check_structured=True)
    print(f"2:4 sparse layers: {pruned} of {total} GEMM layers")
    if output_dir:
        if keras2:
            with contextlib.redirect_stdout(io.StringIO()):  # tf_keras prints the signature
                model.export(output_dir)
        else:
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
    parser.add_argument(
        "--keras2", action="store_true", help="use tf_keras (Keras 2) and a legacy optimizer"
    )
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
        keras2=args.keras2,
    )


if __name__ == "__main__":
    main()
