"""One keras_epi run on the backend KERAS_BACKEND names, for
tests/backends_test.py: the same model, weights and data on every backend.

Usage: python -m tests.scripts.backend_run OUT_DIR [--no-tensorflow]
  [--data-parallel]

Writes OUT_DIR/result.npz: the Taylor scores of one epoch with a zero
learning rate (so the weights the scores are of stay the same), the filter
magnitudes, the plan they give, the pruned model's output on a fixed batch
and its weights' shapes; and OUT_DIR/result.json: the backend, whether
TensorFlow was imported, and what `keras_epi.fit` did.

--no-tensorflow makes `import tensorflow` fail in this process first, as on
a machine without it. --data-parallel (JAX) runs the fits under
`keras.distribution.DataParallel` over every device (two host CPUs with
XLA_FLAGS=--xla_force_host_platform_device_count=2).
"""

import importlib.abc
import importlib.machinery
import json
import os
import sys


class _NoTensorFlow(importlib.abc.MetaPathFinder):
  """The path finder, blind to TensorFlow: as on a machine without it,
  `importlib.util.find_spec("tensorflow")` is None and importing it raises
  ModuleNotFoundError."""

  def __init__(self, finder):
    self.finder = finder

  def find_spec(self, name, path=None, target=None):
    if name == "tensorflow" or name.startswith("tensorflow."):
      return None
    return self.finder.find_spec(name, path, target)

  def invalidate_caches(self):
    self.finder.invalidate_caches()


def _hide_tensorflow():
  sys.meta_path[:] = [_NoTensorFlow(f) if f is importlib.machinery.PathFinder
                      else f for f in sys.meta_path]


def main(out_dir, flags):
  if "--no-tensorflow" in flags:
    _hide_tensorflow()
  import keras  # pylint: disable=g-import-not-at-top
  import numpy as np  # pylint: disable=g-import-not-at-top

  import keras_epi  # pylint: disable=g-import-not-at-top

  if "--data-parallel" in flags:
    keras.distribution.set_distribution(keras.distribution.DataParallel())
  layers = keras.layers

  def model():
    keras.utils.set_random_seed(0)
    x = keras.Input((8, 8, 3))
    h = layers.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
    h = layers.ReLU()(layers.BatchNormalization(name="stem_bn")(h))
    a = layers.Conv2D(12, 3, padding="same", use_bias=False, name="c1")(h)
    a = layers.ReLU()(layers.BatchNormalization(name="bn1")(a))
    b = layers.Conv2D(8, 3, padding="same", name="c2")(a)  # no BN
    h = layers.ReLU()(layers.Add(name="add")([b, h]))
    d = layers.Dense(16, activation="relu", name="hidden")(
        layers.GlobalAveragePooling2D()(h))
    m = keras.Model(x, layers.Dense(3, name="fc")(d))
    # The same weights on every backend: from NumPy, not the backend's RNG.
    rng = np.random.default_rng(1)
    for v in m.weights:
      shape = tuple(v.shape)
      if v.name == "moving_variance":
        v.assign(rng.uniform(0.5, 1.5, size=shape).astype("float32"))
      else:
        v.assign(rng.normal(scale=0.5, size=shape).astype("float32"))
    return m

  rng = np.random.default_rng(2)
  x = rng.normal(size=(32, 8, 8, 3)).astype("float32")
  y = rng.integers(0, 3, size=32).astype("int32")
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)

  # Taylor scores of one epoch at lr 0: the weights stay those above.
  m = model()
  m.compile(keras.optimizers.SGD(0.0), loss)
  cb = keras_epi.EPICallback(prune_ratio=0.5, keep_stem=False, verbose=0)
  m.fit(x, y, batch_size=8, epochs=1, shuffle=False, callbacks=[cb],
        verbose=0)
  taylor = cb.importance
  groups = keras_epi.channel_groups(m)
  magnitude = keras_epi.magnitude_importance(m, groups)
  keep = keras_epi.select_channels(m, taylor, 0.5, keep_stem=False)
  small = keras_epi.prune_model(m, keep)
  out = keras.ops.convert_to_numpy(small(x[:4], training=False))

  # keras_epi.fit: pruned at the deadline, then trained on.
  m = model()
  m.compile(keras.optimizers.SGD(0.05, momentum=0.9), loss)
  cb = keras_epi.EPICallback(prune_ratio=0.5, prune_by=1, keep_stem=False,
                             verbose=0)
  final, history = keras_epi.fit(m, x, y, batch_size=8, epochs=2,
                                 shuffle=False, callbacks=[cb], verbose=0)
  path = os.path.join(out_dir, "final.keras")
  final.save(path)
  reloaded = keras.saving.load_model(path)
  reload_error = float(np.max(np.abs(
      keras.ops.convert_to_numpy(reloaded(x[:4])) -
      keras.ops.convert_to_numpy(final(x[:4])))))

  arrays = {f"taylor/{k}": v for k, v in taylor.items()}
  arrays.update({f"magnitude/{k}": v for k, v in magnitude.items()})
  arrays.update({f"keep/{k}": np.asarray(v) for k, v in keep.items()})
  arrays["output"] = out
  np.savez(os.path.join(out_dir, "result.npz"), **arrays)
  with open(os.path.join(out_dir, "result.json"), "w") as f:
    json.dump({
        "backend": keras.backend.backend(),
        "tensorflow_imported": "tensorflow" in sys.modules,
        "shapes": [list(w.shape) for w in small.weights],
        "macs": [keras_epi.count_macs(small), keras_epi.count_macs(m)],
        "fit": {"prune_epoch": cb.prune_epoch,
                "prune_reason": cb.prune_reason,
                "epochs": history.epoch,
                "loss_finite": bool(np.isfinite(history.history["loss"]).all()),
                "params": [final.count_params(), m.count_params()],
                "iterations": int(keras.ops.convert_to_numpy(
                    final.optimizer.iterations)),
                "reload_error": reload_error},
        "devices": (len(keras.distribution.list_devices())
                    if keras.backend.backend() == "jax" else 1),
    }, f)


if __name__ == "__main__":
  main(sys.argv[1], sys.argv[2:])
