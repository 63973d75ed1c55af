"""Shared fixtures.

`fashion_mnist_dir` writes a small synthetic dataset in Fashion-MNIST's own
format (the four gzipped IDX files that examples/data.py reads through
`--data_dir`), so that the trainer tests need neither Debian's
`dataset-fashion-mnist` package nor the network.
"""

import gzip
import os
import struct

import numpy as np
import pytest

NUM_TRAIN = 1024
NUM_TEST = 256
NUM_CLASSES = 10
SIZE = 28
_BLOCK = 7  # the image is a 4x4 grid of 7x7 cells; class c lights cell c


def _write_idx(path, array):
  """Writes a uint8 array as a gzipped IDX file (type code 0x08)."""
  array = np.ascontiguousarray(array, dtype=np.uint8)
  header = struct.pack(">BBBB", 0, 0, 0x08, array.ndim)
  header += struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.tobytes())


def synthetic_fashion_mnist(num, rng):
  """(images uint8 (num, 28, 28), labels uint8 (num,)): noise plus one bright
  class-dependent block, so the class is plainly learnable."""
  labels = np.arange(num) % NUM_CLASSES
  rng.shuffle(labels)
  images = rng.integers(0, 96, size=(num, SIZE, SIZE))
  for i, label in enumerate(labels):
    row, col = divmod(int(label), SIZE // _BLOCK)
    r, c = row * _BLOCK, col * _BLOCK
    images[i, r:r + _BLOCK, c:c + _BLOCK] = rng.integers(
        176, 256, size=(_BLOCK, _BLOCK))
  return images.astype(np.uint8), labels.astype(np.uint8)


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory):
  """A directory of synthetic Fashion-MNIST IDX files (1,024 train, 256
  test), for `--data_dir=` and `data.load(..., data_dir=)`."""
  directory = tmp_path_factory.mktemp("fashion_mnist")
  rng = np.random.default_rng(0)
  for prefix, num in (("train", NUM_TRAIN), ("t10k", NUM_TEST)):
    images, labels = synthetic_fashion_mnist(num, rng)
    _write_idx(os.path.join(directory, f"{prefix}-images-idx3-ubyte.gz"),
               images)
    _write_idx(os.path.join(directory, f"{prefix}-labels-idx1-ubyte.gz"),
               labels)
  return str(directory)


def pytest_collection_modifyitems(config, items):
  """Tests marked `tensorflow` are skipped on the other Keras backends."""
  del config
  backend = os.environ.get("KERAS_BACKEND", "tensorflow")
  if backend == "tensorflow":
    return
  skip = pytest.mark.skip(reason=f"needs the TensorFlow backend, this run "
                          f"is on {backend}")
  for item in items:
    if item.get_closest_marker("tensorflow") is not None:
      item.add_marker(skip)
