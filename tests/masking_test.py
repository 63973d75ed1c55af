"""Masking: the masked training model computes what its cut computes."""

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import graph
from keras_epi import masking
from tests import oracle
from tests.helpers import make_data
from tests.helpers import sigmoid_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


@pytest.mark.parametrize("batchnorm", [False, True])
def test_masked_model_equals_pruned_model_after_a_sigmoid(batchnorm):
  model = sigmoid_model(batchnorm)
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb])
  assert len(cb.keep["c1"]) < 12 and len(cb.keep["c2"]) < 12
  x_test = make_data(32, seed=1)[0]
  error = oracle.relative_error(cb.pruned_model.predict(x_test, verbose=0),
                                model.predict(x_test, verbose=0))
  assert error < 1e-5
  # The consumers' rows that read removed channels are zero.
  removed = np.setdiff1d(np.arange(12), cb.keep["c1"])
  kernel = keras.ops.convert_to_numpy(model.get_layer("c2").kernel)
  assert np.all(kernel[:, :, removed, :] == 0)
  removed = np.setdiff1d(np.arange(12), cb.keep["c2"])
  dense = keras.ops.convert_to_numpy(model.get_layer("fc").kernel)
  assert np.all(dense[removed] == 0)


def test_channel_masks_cover_producer_and_consumer_axes():
  model = sigmoid_model(batchnorm=True)
  analysis = graph.analyze(model)
  keep = {"c1": np.array([0, 2, 4]), "c2": np.arange(6)}
  masks = {v.path: m for v, m in masking.channel_masks(model, analysis, keep)}
  alive_c1 = np.isin(np.arange(12), keep["c1"])
  alive_c2 = np.isin(np.arange(12), keep["c2"])
  np.testing.assert_array_equal(masks["c1/kernel"].reshape(-1), alive_c1)
  np.testing.assert_array_equal(masks["bn1/beta"], alive_c1)
  np.testing.assert_array_equal(  # c2 reads c1 (rows) and produces c2
      np.broadcast_to(masks["c2/kernel"], (3, 3, 12, 12))[0, 0],
      np.outer(alive_c1, alive_c2))
  np.testing.assert_array_equal(masks["fc/kernel"].reshape(-1), alive_c2)
  assert "stem/kernel" not in masks and "fc/bias" not in masks
