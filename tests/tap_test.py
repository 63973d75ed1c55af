"""Tests of keras_epi.tap.GradientTap: the train step's own gradients,
for one fit, and a tap that cannot outlive it."""

import keras
import numpy as np
import pytest

from keras_epi import tap as tap_lib

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def _model():
  keras.utils.set_random_seed(0)
  model = keras.Sequential([keras.Input((3,)), keras.layers.Dense(2)])
  model.compile(optimizer=keras.optimizers.SGD(0.0), loss="mse")
  return model


@pytest.mark.tensorflow  # variables assigned in the step (elsewhere the
# scores' tests see the tap's gradients: importance_test, scoring_test)
def test_the_tap_sees_the_gradients_of_the_train_step():
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  model = _model()
  x = np.arange(12, dtype="float32").reshape(4, 3) / 10
  y = np.ones((4, 2), "float32")
  # The tap runs inside the traced train step: it writes what it sees into
  # variables, read after the step.
  seen = [tf.Variable(tf.zeros(v.shape)) for v in model.trainable_weights]

  def on_gradients(grads, variables):
    for store, g in zip(seen, grads):
      store.assign(g)
    return grads

  tap = tap_lib.GradientTap(model, on_gradients)
  tap.install()
  tap.grant()
  start = [keras.ops.convert_to_numpy(v) for v in model.weights]
  model.fit(x, y, batch_size=4, epochs=1, verbose=0)
  results = [[s.numpy() for s in seen]]
  # Oracle: the gradient of the mean squared error by hand.
  kernel, bias = start  # SGD(0): the weights stay
  residual = x @ kernel + bias - y
  np.testing.assert_allclose(results[0][0], x.T @ residual * 2 / residual.size,
                             rtol=1e-5)
  np.testing.assert_allclose(results[0][1], residual.sum(0) * 2 /
                             residual.size, rtol=1e-5)
  tap.remove()
  assert not tap.installed


def test_a_step_without_a_lease_removes_the_tap():
  model = _model()
  calls = []
  tap = tap_lib.GradientTap(model, lambda g, v: calls.append(1) or g)
  tap.install()
  # No grant: a later fit the owner is not part of.
  model.fit(np.zeros((4, 3)), np.zeros((4, 2)), batch_size=4, epochs=1,
            verbose=0)
  assert not tap.installed and not calls
  assert "apply" not in vars(model.optimizer)
