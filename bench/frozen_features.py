"""Accuracy of frozen features: which backbone, head and flip test-time augmentation get where.

  .venv/bin/python bench/frozen_features.py [--data DIR] [--backbones efficientnet_lite0,...]

For each backbone (ImageNet weights; native size, or NAME@SIZE) the pooled features of every
train and test image, and of its horizontal mirror, are computed once (decoded as the pipeline
does: ingest decoder, bilinear resize, uint8) and kept in --cache (npz). Then for each backbone,
and each combination of them (features side by side: a cheap ensemble), on the train features:
logistic regression (C by 5-fold CV) and the project's head (trainer/model.py build_head,
default HParams, early stopping on a fifth of train as the Trainer does), each scored on the
test split plain and with flip TTA (mean of the image's and its mirror's probabilities), trained
on the train images alone, or with their mirrors, or with a random augmented view of each
(trainer/data.py augment: crop and flip). Prints one JSON object.
"""

import argparse
import itertools
import json
import os
import tempfile
import time

import numpy as np

from common import SHARED_DATA

DEFAULT_BACKBONES = "efficientnet_lite0,efficientnet_lite1,efficientnet_lite2"
BATCH_SIZE = 32


def encoded_images(data):
  """{split: (encoded images, labels)} through the ingest decoder, as the pipeline stores them."""
  from headswap.components import features
  from headswap.components.image_example_gen import decode, sources

  listing = sources.list_images(data)
  splits = {}
  for candidate in listing.candidates:
    example = decode.to_example(decode.read_bytes(candidate.path), candidate.source, 0,
                                candidate.label_name, sources.DEFAULT_MAX_PIXELS)
    images, labels = splits.setdefault(candidate.given_split or features.TRAIN, ([], []))
    images.append(example.features.feature[features.IMAGE].bytes_list.value[0])
    labels.append(listing.class_names.index(candidate.label_name))
  return {split: (images, np.array(labels)) for split, (images, labels) in splits.items()}


def pixels_of(images, image_size):
  """uint8 [N, size, size, 3], as trainer/data.py decoded_images makes them."""
  import tensorflow as tf

  from headswap.trainer import preprocessing

  dataset = tf.data.Dataset.from_tensor_slices(images).map(
      lambda one: tf.cast(preprocessing.decode_image(one, image_size), tf.uint8),
      num_parallel_calls=tf.data.AUTOTUNE)
  return np.stack(list(dataset.as_numpy_iterator()))


def augmented_view(pixels):
  """A random view of each image, as trainer/data.py augment makes it with the default
  HParams (the pipeline's second cached view before the mirror took its place)."""
  import tensorflow as tf

  from headswap.trainer import data
  from headswap.trainer.hparams import HParams

  hp = HParams()
  return np.stack([data.augment(tf.constant(image), tf.constant([hp.seed + 1, i], tf.int64),
                                hp.augmentations).numpy() for i, image in enumerate(pixels)])


def extract(base, pixels):
  """(pooled features [N, D], seconds of the forward pass alone: [wall, CPU of this process]).

  CPU seconds are the steadier measure on a shared machine: waiting for a core costs none."""
  import tensorflow as tf

  forward = tf.function(lambda batch: base(batch, training=False))
  forward(tf.zeros((BATCH_SIZE, *pixels.shape[1:])))  # trace outside the timing
  wall, cpu, batches = time.perf_counter(), time.process_time(), []
  for i in range(0, len(pixels), BATCH_SIZE):
    batches.append(forward(tf.cast(pixels[i:i + BATCH_SIZE], tf.float32)).numpy())
  return np.concatenate(batches), np.array([time.perf_counter() - wall,
                                            time.process_time() - cpu])


def cache_file(cache, backbone):
  return os.path.join(cache, f"{backbone}.npz")


def backbone_features(backbone, splits, cache):
  """{train, train_flip, train_view, test, test_flip, train_labels, test_labels, images_per_s,
  images_per_cpu_s} of "name" or "name@size" (a name may join backbones side by side with
  "+", as the pipeline's base: trainer/backbones/registry.py build_base)."""
  path = cache_file(cache, backbone)
  if os.path.exists(path):
    return dict(np.load(path))
  from headswap.trainer.backbones import registry

  name, _, size = backbone.partition("@")
  base = registry.build_base(name, "imagenet", int(size) if size else None)
  size = base.input_shape[1]
  result, seconds = {}, np.zeros(2)
  for split, (images, labels) in splits.items():
    pixels = pixels_of(images, size)
    result[split], split_seconds = extract(base, pixels)
    result[f"{split}_flip"], flip_seconds = extract(base, pixels[:, :, ::-1])
    result[f"{split}_labels"] = labels
    seconds += split_seconds + flip_seconds
    if split == "train":
      result["train_view"], _ = extract(base, augmented_view(pixels))
  extracted = 2 * sum(len(labels) for _, labels in splits.values())
  result["images_per_s"], result["images_per_cpu_s"] = extracted / seconds
  os.makedirs(cache, exist_ok=True)
  np.savez(path, **result)
  return result


def logistic_regression(train_x, train_y, seed):
  """probabilities(x) of a logistic regression, C chosen by 5-fold CV on the train features."""
  from sklearn.linear_model import LogisticRegressionCV
  from sklearn.pipeline import make_pipeline
  from sklearn.preprocessing import StandardScaler

  model = make_pipeline(StandardScaler(), LogisticRegressionCV(
      Cs=np.logspace(-4, 1, 11), cv=5, max_iter=5000, random_state=seed))
  model.fit(train_x, train_y)
  return model.predict_proba


def project_head(train_x, train_y, seed):
  """probabilities(x) of build_head with the default HParams, trained as the Trainer's phase 1:
  Adam at the default LR, early stopping on val_loss with the best weights restored."""
  import keras

  from headswap.trainer.hparams import HParams
  from headswap.trainer.model import build_head, compile_for_training

  hp = HParams()
  keras.utils.set_random_seed(seed)
  order = np.random.default_rng(seed).permutation(len(train_x))
  held = order[:len(order) // 5]
  kept = order[len(order) // 5:]
  head = build_head(train_x.shape[1], int(train_y.max()) + 1, hp)
  compile_for_training(head, hp.learning_rate)
  head.fit(train_x[kept], train_y[kept], validation_data=(train_x[held], train_y[held]),
           epochs=hp.epochs, batch_size=hp.batch_size, verbose=0,
           callbacks=[keras.callbacks.EarlyStopping(monitor="val_loss", patience=hp.patience,
                                                    restore_best_weights=True)])
  return lambda x: head.predict(x, batch_size=256, verbose=0)


CLASSIFIERS = {"logistic_regression": logistic_regression, "project_head": project_head}


def scores(features, classifier, seed):
  """Test accuracy of one classifier, per training set (plain or + mirrors) and TTA."""
  test_y = features["test_labels"]
  results = {}
  for train_set in ("train", "train+flip", "train+view"):
    train_x, train_y = features["train"], features["train_labels"]
    if train_set != "train":
      train_x = np.concatenate([train_x, features[f"train_{train_set[6:]}"]])
      train_y = np.concatenate([train_y, train_y])
    probabilities = CLASSIFIERS[classifier](train_x, train_y, seed)
    plain = probabilities(features["test"])
    tta = (plain + probabilities(features["test_flip"])) / 2
    results[train_set] = {"accuracy": round(float((plain.argmax(1) == test_y).mean()), 4),
                          "accuracy_flip_tta": round(float((tta.argmax(1) == test_y).mean()), 4)}
  return results


def concatenated(all_features):
  """One feature vector per image from several backbones, side by side: a cheap ensemble."""
  first = next(iter(all_features.values()))
  joined = {key: np.concatenate([f[key] for f in all_features.values()], axis=1)
            for key in ("train", "train_flip", "train_view", "test", "test_flip")}
  return {**joined, "train_labels": first["train_labels"], "test_labels": first["test_labels"]}


def main():
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--data", default=SHARED_DATA, help="pre-split: train/ and test/ folders")
  parser.add_argument("--backbones", default=DEFAULT_BACKBONES,
                      help="comma list of names, each at its native size or as NAME@SIZE")
  parser.add_argument("--cache", default=os.path.join(tempfile.gettempdir(), "headswap_features"),
                      help="npz per backbone; delete to recompute")
  parser.add_argument("--seed", type=int, default=0)
  args = parser.parse_args()

  names = [name.strip() for name in args.backbones.split(",") if name.strip()]
  missing = [n for n in names if not os.path.exists(cache_file(args.cache, n))]
  splits = encoded_images(args.data) if missing else None
  all_features = {name: backbone_features(name, splits, args.cache) for name in names}
  rows = {}
  for name, features in all_features.items():
    rows[name] = {"feature_dim": int(features["train"].shape[1]),
                  "images_per_s": round(float(features["images_per_s"]), 1),
                  "images_per_cpu_s": round(float(features["images_per_cpu_s"]), 1),
                  **{c: scores(features, c, args.seed) for c in CLASSIFIERS}}
  for size in range(2, len(all_features) + 1):
    for combination in itertools.combinations(all_features, size):
      joined = concatenated({name: all_features[name] for name in combination})
      rows["+".join(combination)] = {c: scores(joined, c, args.seed) for c in CLASSIFIERS}
  first = next(iter(all_features.values()))
  print(json.dumps({"data": args.data, "train_images": len(first["train_labels"]),
                    "test_images": len(first["test_labels"]), "results": rows}, indent=2))


if __name__ == "__main__":
  main()
