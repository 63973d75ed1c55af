"""Mirrored (2 logical CPUs) vs single-device: importance, prune, fit.

Run in its own process: the logical devices must be set before TensorFlow
starts. Prints one JSON line with the measurements for the test to check.
"""

import json
import sys

import tensorflow as tf

cpu = tf.config.list_physical_devices("CPU")[0]
tf.config.set_logical_device_configuration(
    cpu, [tf.config.LogicalDeviceConfiguration()] * 2)

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position
import numpy as np  # pylint: disable=g-import-not-at-top,wrong-import-position

import keras_epi  # pylint: disable=g-import-not-at-top,wrong-import-position

L = keras.layers


def build():
  x = keras.Input((8, 8, 2))
  h = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
  # Synchronized BN: the forward pass (and so the gradients) of a replica
  # pair then equals one device's on the global batch.
  h = L.ReLU()(L.BatchNormalization(synchronized=True, name="stem_bn")(h))
  a = L.Conv2D(12, 3, padding="same", use_bias=False, name="c1")(h)
  a = L.ReLU()(L.BatchNormalization(synchronized=True, name="bn1")(a))
  b = L.Conv2D(10, 3, padding="same", name="c2")(a)  # no BN: filter Taylor
  y = L.Dense(3, name="fc")(L.GlobalAveragePooling2D()(L.ReLU()(b)))
  model = keras.Model(x, y)
  model.compile(keras.optimizers.SGD(0.0),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def importance(model, x, y):
  cb = keras_epi.EPICallback(prune_ratio=0.5, window=1)
  model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, verbose=0,
            callbacks=[cb])
  return cb.importance


def main():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(16, 8, 8, 2)).astype("float32")
  y = rng.integers(0, 3, size=16).astype("int32")
  keras.utils.set_random_seed(0)
  single = build()
  strategy = tf.distribute.MirroredStrategy(["/cpu:0", "/cpu:1"])
  with strategy.scope():
    mirrored = build()
  mirrored.set_weights(single.get_weights())
  ref = importance(single, x, y)
  got = importance(mirrored, x, y)
  errors = {k: float(np.max(np.abs(got[k] - ref[k])) /
                     max(float(np.max(np.abs(ref[k]))), 1e-30)) for k in ref}

  # keras_epi.fit under the strategy: prune after one epoch, keep training.
  with strategy.scope():
    model = build()
    model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  final, history = keras_epi.fit(model, x, y, batch_size=8, epochs=3,
                                 verbose=0, callbacks=[cb])
  print(json.dumps({
      "replicas": strategy.num_replicas_in_sync,
      "relative_errors": errors,
      "groups": sorted(ref),
      "final_strategy": type(final.distribute_strategy).__name__,
      "epochs": history.epoch,
      "macs_ratio": keras_epi.count_macs(final) / keras_epi.count_macs(model),
      "iterations": int(final.optimizer.iterations.numpy()),
  }))
  return 0


if __name__ == "__main__":
  sys.exit(main())
