"""Small models and data that several test files train (testonly)."""

import keras
import numpy as np

L = keras.layers


def make_model(seed=0, optimizer=None):
  """A small residual CNN with BN on a learnable task."""
  keras.utils.set_random_seed(seed)
  x = keras.Input((8, 8, 1))
  h = L.Conv2D(8, 3, padding="same", use_bias=False, name="stem")(x)
  h = L.ReLU()(L.BatchNormalization(name="stem_bn")(h))
  a = L.Conv2D(16, 3, padding="same", use_bias=False, name="c1")(h)
  a = L.ReLU()(L.BatchNormalization(name="bn1")(a))
  b = L.Conv2D(16, 3, padding="same", use_bias=False, name="c2")(a)
  b = L.BatchNormalization(name="bn2")(b)
  s = L.Conv2D(16, 1, use_bias=False, name="short")(h)
  s = L.BatchNormalization(name="short_bn")(s)
  h = L.ReLU()(L.Add()([b, s]))
  y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(h))
  model = keras.Model(x, y)
  model.compile(optimizer or keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True),
                metrics=["accuracy"])
  return model


def make_data(n=256, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, 8, 8, 1)).astype("float32")
  y = (x[:, :4].mean(axis=(1, 2, 3)) > 0).astype("int32")
  return x, y


def sigmoid_model(batchnorm):
  """Convolutions followed by sigmoid (sigmoid(0) = 0.5), optionally through
  BatchNormalization, and a Dense layer after global pooling."""
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 1))
  h = L.Conv2D(8, 3, padding="same", name="stem")(x)
  h = L.Conv2D(12, 3, padding="same", name="c1")(h)
  if batchnorm:
    h = L.BatchNormalization(name="bn1")(h)
  h = L.Activation("sigmoid")(h)
  h = L.Conv2D(12, 3, padding="same", name="c2")(h)
  h = L.Activation("sigmoid")(h)
  y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(h))
  model = keras.Model(x, y)
  model.compile(keras.optimizers.Adam(1e-2),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def loss_gradients(model, loss, x, y):
  """``[dL/dv for v in model.trainable_variables]`` (NumPy) of
  ``loss(y, model(x, training=True))``, on the backend Keras runs on: the
  reference the tests compare the train step's own gradients with."""
  backend = keras.backend.backend()
  variables = model.trainable_variables
  if backend == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    with tf.GradientTape() as tape:
      value = loss(y, model(x, training=True))
    return [g.numpy() for g in tape.gradient(value, variables)]
  if backend == "jax":
    import jax  # pylint: disable=g-import-not-at-top
    frozen = [v.value for v in model.non_trainable_variables]

    def value(trainable):
      out, _ = model.stateless_call(trainable, frozen, x, training=True)
      return loss(y, out)
    return [np.asarray(g) for g in
            jax.grad(value)([v.value for v in variables])]
  if backend == "torch":
    import torch  # pylint: disable=g-import-not-at-top
    value = loss(y, model(x, training=True))
    grads = torch.autograd.grad(value, [v.value for v in variables])
    return [g.detach().cpu().numpy() for g in grads]
  raise NotImplementedError(f"no gradients on backend {backend!r}")
