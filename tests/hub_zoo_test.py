"""keras_hub CNNs, built from constructor arguments (no presets, no network):
the dead-channel equivalence oracle, count_macs and EPI training."""

import keras
import numpy as np
import pytest

import keras_epi
from tests import hub_models
from tests import oracle

# Models trained with keras_epi.fit: one per family (every model gets the
# oracle; training a few keeps the suite within its time budget).
_TRAINED = ("ResNetClassifier", "MobileNetClassifier",
            "EfficientNetClassifier", "HGNetV2Classifier", "CSPNetCs3Edge",
            "DenseNet", "VGG", "Xception", "DeepLabV3Segmenter", "RetinaNet",
            "BASNet")


def _build(name):
  model, shape = hub_models.HUB_MODELS[name]()
  oracle.randomize_statistics(model)
  return model, shape


@pytest.mark.parametrize("name", sorted(hub_models.HUB_MODELS))
def test_hub_model_prunes_exactly(name):
  model, shape = _build(name)
  x = np.random.default_rng(1).uniform(0, 1, (2, *shape)).astype("float32")
  dense_macs = keras_epi.count_macs(model)
  zeroed, pruned, keep, error = oracle.check_equivalence(model, x, copy=False)
  assert keep, "the oracle removed nothing"
  assert error <= 1e-4, f"{name}: relative error {error:.2e}"
  before = [w.copy() for w in zeroed.get_weights()]
  again = keras_epi.prune_model(zeroed, keep)
  for a, b in zip(zeroed.get_weights(), before):  # the caller's model kept
    np.testing.assert_array_equal(a, b)
  del again
  assert keras_epi.count_macs(pruned) < dense_macs
  assert pruned.count_params() < zeroed.count_params()


def _fit_data(model, shape, n=8):
  rng = np.random.default_rng(0)
  x = rng.uniform(0, 1, (n, *shape)).astype("float32")
  y = keras.tree.map_structure(
      lambda t: rng.normal(size=(n, *t.shape[1:])).astype("float32"),
      model.outputs if len(model.outputs) > 1 else model.outputs[0])
  return x, y


@pytest.mark.parametrize("name", _TRAINED)
def test_hub_model_trains_with_epi_and_continues_pruned(name):
  model, shape = _build(name)
  model = keras.Model(model.inputs, model.outputs)  # no task-specific steps
  model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
  x, y = _fit_data(model, shape)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             verbose=0)
  small, history = keras_epi.fit(model, x, y, epochs=2, batch_size=4,
                                 callbacks=[cb], verbose=0)
  assert cb.prune_epoch == 1
  assert len(history.history["loss"]) == 2
  assert np.isfinite(history.history["loss"]).all()
  assert keras_epi.count_macs(small) < keras_epi.count_macs(model)
  assert cb.importance and all(np.isfinite(v).all()
                               for v in cb.importance.values())
