"""The output-equivalence oracle over keras.applications models."""

import keras
import numpy as np
import pytest

import keras_epi
from tests import oracle
from tests import zoo_models

# (builder, input shape, ignore) - small inputs keep the suite fast; the graph
# does not depend on the spatial size except through Flatten (VGG16 keeps 224).
ZOO = {
    "ResNet50": (keras.applications.ResNet50, (64, 64, 3)),
    "MobileNetV2": (keras.applications.MobileNetV2, (64, 64, 3)),
    "VGG16": (keras.applications.VGG16, (224, 224, 3)),
    "DenseNet121": (keras.applications.DenseNet121, (64, 64, 3)),
    "InceptionV3": (keras.applications.InceptionV3, (96, 96, 3)),
    "Xception": (keras.applications.Xception, (72, 72, 3)),
    "EfficientNetB0": (keras.applications.EfficientNetB0, (64, 64, 3)),
    "MobileNetV3Small": (keras.applications.MobileNetV3Small, (64, 64, 3)),
    "NASNetMobile": (keras.applications.NASNetMobile, (64, 64, 3)),
    "ResNet50V2": (keras.applications.ResNet50V2, (64, 64, 3)),
}


def _build(name):
  builder, shape = ZOO[name]
  keras.utils.set_random_seed(0)
  kwargs = dict(weights=None, input_shape=shape, classes=10,
                classifier_activation=None)
  if name == "NASNetMobile":
    kwargs.pop("input_shape")
    kwargs["input_tensor"] = keras.Input(shape)
  model = builder(**kwargs)
  oracle.randomize_statistics(model)
  return model


@pytest.mark.parametrize("name", sorted(ZOO))
def test_zeroed_channels_removed_gives_same_output(name, tmp_path):
  model = _build(name)
  x = np.random.default_rng(1).uniform(0, 255, (2, *ZOO[name][1])).astype(
      "float32")
  before = [w.copy() for w in model.get_weights()]

  zeroed, pruned, keep, error = oracle.check_equivalence(model, x)

  assert keep, "the oracle removed nothing"
  assert error <= 1e-4, f"{name}: relative error {error:.2e}"
  # The caller's model is untouched by prune_model.
  zeroed_again = oracle.copy_model(zeroed)
  for a, b in zip(zeroed.get_weights(), zeroed_again.get_weights()):
    np.testing.assert_array_equal(a, b)
  for a, b in zip(model.get_weights(), before):
    np.testing.assert_array_equal(a, b)
  assert keras_epi.count_macs(pruned) < keras_epi.count_macs(zeroed)
  assert pruned.count_params() < zeroed.count_params()
  assert [l.name for l in pruned.layers] == [l.name for l in zeroed.layers]
  # .keras round trip with plain keras.saving.load_model.
  path = tmp_path / f"{name}.keras"
  pruned.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0),
                             pruned.predict(x, verbose=0), rtol=1e-5,
                             atol=1e-5)


# Every other keras.applications family of Keras 3.15 and the keras.io
# patterns (tests/zoo_models.py), without `ignore=`.
_MORE = sorted(set(zoo_models.ZOO_MODELS) - set(ZOO) - {
    "channels_first",  # TF cannot run NCHW convs on CPU; see layers_test
    "custom_conv_bn_act", "custom_residual"})  # layers_test


@pytest.mark.parametrize("name", _MORE)
def test_more_families_prune_exactly_out_of_the_box(name):
  model, shape = zoo_models.ZOO_MODELS[name]()
  oracle.randomize_statistics(model)
  x = zoo_models.random_inputs(shape)
  dense_macs = keras_epi.count_macs(model)
  _, pruned, keep, error = oracle.check_equivalence(model, x, copy=False)
  assert keep, "the oracle removed nothing"
  assert error <= 1e-4, f"{name}: relative error {error:.2e}"
  assert keras_epi.count_macs(pruned) < dense_macs


@pytest.mark.parametrize("name", ["ConvNeXtTiny", "InceptionResNetV2"])
def test_probed_per_channel_layers_let_the_mac_budget_reach_every_block(name):
  # LayerScale and CustomScaleLayer are probed per-channel layers, so the
  # budget reaches inside every block. (ConvNeXt's residual streams pass
  # through LayerNormalization over the channels, which keeps them whole.)
  model, _ = zoo_models.ZOO_MODELS[name]()
  groups = keras_epi.channel_groups(model)
  keep = keras_epi.select_channels(
      model, keras_epi.magnitude_importance(model, groups), 0.5,
      budget="macs")
  fraction = keras_epi.count_macs(keras_epi.prune_model(model, keep)) / \
      keras_epi.count_macs(model)
  assert fraction <= 0.5 + 0.01, fraction
