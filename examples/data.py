"""Datasets for the example trainers: offline Fashion-MNIST, any tfds dataset.

Fashion-MNIST is read from the IDX files of Debian's `dataset-fashion-mnist`
package (/usr/share/datasets/fashion-mnist) or a `--data_dir` holding the same
four files, and from tensorflow-datasets otherwise. Any other image
classification dataset of tensorflow-datasets (cifar10, imagenette,
imagenet2012 with its manual dir, ...) is loaded by name. Images stay uint8
until `preprocess`, which both the training pipeline and the exported serving
function use.
"""

import dataclasses
import gzip
import os

import numpy as np
import tensorflow as tf

DEBIAN_FASHION_MNIST = "/usr/share/datasets/fashion-mnist"
_IDX_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


class DataError(Exception):
  """The data cannot be found or read; the message says what to do."""


@dataclasses.dataclass(frozen=True)
class Dataset:
  """Splits of uint8 images ``(H, W, C)`` and int labels, plus metadata."""
  name: str
  train: tf.data.Dataset
  validation: tf.data.Dataset | None
  test: tf.data.Dataset
  num_train: int
  num_validation: int
  num_test: int
  image_shape: tuple
  num_classes: int
  mean: tuple  # per channel, in [0, 1] units, from the training split
  std: tuple
  source: str


def read_idx(path):
  """Reads a (gzipped) IDX file into a NumPy array."""
  opener = gzip.open if path.endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] != 0 or data[1] != 0:
    raise DataError(f"{path} is not an IDX file.")
  dtype = {0x08: np.uint8, 0x09: np.int8, 0x0B: ">i2", 0x0C: ">i4",
           0x0D: ">f4", 0x0E: ">f8"}.get(data[2])
  if dtype is None:
    raise DataError(f"{path}: unknown IDX type code {data[2]:#x}.")
  ndim = data[3]
  shape = tuple(int.from_bytes(data[4 + 4 * i:8 + 4 * i], "big")
                for i in range(ndim))
  array = np.frombuffer(data, dtype=dtype, offset=4 + 4 * ndim)
  if array.size != np.prod(shape):
    raise DataError(f"{path}: expected {np.prod(shape)} values, found "
                    f"{array.size} (truncated file?).")
  return array.reshape(shape)


def _fashion_mnist_arrays(data_dir):
  """(train images, train labels, test images, test labels) or None."""
  for directory in [d for d in (data_dir, DEBIAN_FASHION_MNIST) if d]:
    paths = {split: [os.path.join(directory, f) for f in files]
             for split, files in _IDX_FILES.items()}
    if all(os.path.exists(p) for ps in paths.values() for p in ps):
      arrays = []
      for split in ("train", "test"):
        images, labels = (read_idx(p) for p in paths[split])
        arrays += [images[..., None], labels.astype(np.int64)]
      return tuple(arrays), directory
  return None, None


def load(name, data_dir=None, max_train_examples=None,
         validation_examples=0, seed=0):
  """Loads a dataset.

  Args:
    name: "fashion_mnist" or a tensorflow-datasets name.
    data_dir: Directory of the IDX files (fashion_mnist) or the tfds data
      directory.
    max_train_examples: Use only this many training examples (a quick run).
    validation_examples: Held out from the training split (a fixed, seeded
      choice) for tuning, e.g. the EPI threshold; never the test set.
    seed: Seed of the validation hold-out.

  Returns:
    A `Dataset`.

  Raises:
    DataError: when the data is missing and cannot be downloaded, with what
      to do.
  """
  if name == "fashion_mnist":
    arrays, directory = _fashion_mnist_arrays(data_dir)
    if arrays is not None:
      x_train, y_train, x_test, y_test = arrays
      return _from_arrays(name, x_train, y_train, x_test, y_test, 10,
                          max_train_examples, validation_examples, seed,
                          source=f"IDX files in {directory}")
  return _from_tfds(name, data_dir, max_train_examples, validation_examples,
                    seed)


def _split(x, y, max_train_examples, validation_examples, seed):
  order = np.random.default_rng(seed).permutation(len(x))
  val = order[:validation_examples]
  train = order[validation_examples:]
  if max_train_examples:
    train = train[:max_train_examples]
  train = np.sort(train)
  return (x[train], y[train]), (x[val], y[val])


def _from_arrays(name, x_train, y_train, x_test, y_test, num_classes,
                 max_train_examples, validation_examples, seed, source):
  (x_train, y_train), (x_val, y_val) = _split(
      x_train, y_train, max_train_examples, validation_examples, seed)
  scaled = x_train.astype(np.float64) / 255.0
  axes = tuple(range(scaled.ndim - 1))

  def ds(x, y):
    return tf.data.Dataset.from_tensor_slices((x, y))

  return Dataset(
      name=name, train=ds(x_train, y_train),
      validation=ds(x_val, y_val) if len(x_val) else None,
      test=ds(x_test, y_test), num_train=len(x_train),
      num_validation=len(x_val), num_test=len(x_test),
      image_shape=tuple(x_train.shape[1:]), num_classes=num_classes,
      mean=tuple(scaled.mean(axis=axes).tolist()),
      std=tuple(scaled.std(axis=axes).tolist()), source=source)


def _from_tfds(name, data_dir, max_train_examples, validation_examples,
               seed):
  """Loads through tensorflow-datasets into memory (small datasets) or as a
  stream (large ones)."""
  import tensorflow_datasets as tfds  # pylint: disable=g-import-not-at-top
  try:
    builder = tfds.builder(name, data_dir=data_dir)
  except Exception as e:  # pylint: disable=broad-except
    raise DataError(
        f"Unknown dataset {name!r}: use fashion_mnist or a "
        f"tensorflow-datasets image classification name (cifar10, "
        f"imagenette, ...). ({str(e).splitlines()[0]})") from None
  try:
    builder.download_and_prepare()
  except Exception as e:  # pylint: disable=broad-except
    hint = (" Install Debian's `dataset-fashion-mnist` package (offline IDX "
            f"files in {DEBIAN_FASHION_MNIST}) or pass --data_dir with the "
            "four IDX files." if name == "fashion_mnist" else
            " Prepare it where the network allows and pass --data_dir, or "
            "put manual downloads in tfds' manual_dir.")
    reason = (str(e).splitlines() or [""])[0][:200]
    raise DataError(f"Could not load {name!r}: no local files and the "
                    f"download failed ({type(e).__name__}: {reason})."
                    f"{hint}") from None
  info = builder.info
  features = info.features
  image_key = next((k for k in ("image", "img") if k in features), None)
  if image_key is None or "label" not in features:
    raise DataError(f"{name!r} is not an image classification dataset "
                    "(needs 'image' and 'label' features).")
  splits = info.splits
  test_split = "test" if "test" in splits else "validation"
  num_classes = features["label"].num_classes
  shape = tuple(features[image_key].shape)
  if None in shape or splits["train"].num_examples > 200_000:
    raise DataError(
        f"{name!r} has variable-size or very many images; the example "
        "trainer loads small datasets into memory. Resize it to a fixed "
        "size with tfds first, or use --dataset=cifar10/fashion_mnist.")
  train = tfds.as_numpy(builder.as_dataset(split="train", batch_size=-1,
                                           as_supervised=True))
  test = tfds.as_numpy(builder.as_dataset(split=test_split, batch_size=-1,
                                          as_supervised=True))
  return _from_arrays(name, train[0], train[1], test[0], test[1],
                      num_classes, max_train_examples, validation_examples,
                      seed, source=f"tensorflow-datasets ({data_dir or 'default dir'})")


def preprocess(images, mean, std, image_size=None):
  """uint8 images -> normalised float32 (the serving model uses this too)."""
  x = tf.cast(images, tf.float32) / 255.0
  if image_size and tuple(x.shape[-3:-1]) != (image_size, image_size):
    x = tf.image.resize(x, (image_size, image_size))
  return (x - tf.constant(mean, tf.float32)) / tf.constant(std, tf.float32)


def pipeline(ds, batch_size, training, mean, std, image_size=None,
             augment=False, seed=0, shuffle_buffer=60_000, autotune=True):
  """A batched tf.data pipeline with optional CIFAR-style augmentation
  (pad 4 pixels (2 for 28-pixel images), random crop, horizontal flip).
  `autotune=False` turns tf.data's autotuning off: deleting a fit's input
  iterator then does not wait for the autotuning thread
  (benchmarks/training_cost/README.md, fit's return)."""
  options = tf.data.Options()
  options.experimental_distribute.auto_shard_policy = (
      tf.data.experimental.AutoShardPolicy.DATA)
  if not autotune:
    options.autotune.enabled = False
  ds = ds.with_options(options)
  if training:
    ds = ds.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)

  def prepare(image, label):
    x = preprocess(image, mean, std, image_size)
    if training and augment:
      h, w = x.shape[0], x.shape[1]
      pad = 4 if h >= 32 else 2
      x = tf.image.resize_with_crop_or_pad(x, h + 2 * pad, w + 2 * pad)
      x = tf.image.random_crop(x, (h, w, x.shape[2]))
      x = tf.image.random_flip_left_right(x)
    return x, label

  ds = ds.map(prepare, num_parallel_calls=tf.data.AUTOTUNE)
  return ds.batch(batch_size, drop_remainder=training).prefetch(
      tf.data.AUTOTUNE)
