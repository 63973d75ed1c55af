"""Tests of keras_epi.count_macs against hand-computed counts, and of the
budgeted choice of channels (keras_epi.select_channels)."""

import keras
import numpy as np
import pytest

import keras_epi

L = keras.layers


@pytest.mark.parametrize("layer, shape, macs", [
    # 6x6 output positions x 3x3 kernel x 3 in x 8 out
    (L.Conv2D(8, 3), (8, 8, 3), 6 * 6 * 9 * 3 * 8),
    (L.Conv2D(8, 3, strides=2, padding="same"), (8, 8, 3), 4 * 4 * 9 * 3 * 8),
    (L.Conv2D(8, 3, groups=2), (8, 8, 4), 6 * 6 * 9 * 2 * 8),
    (L.Conv1D(5, 3), (10, 4), 8 * 3 * 4 * 5),
    (L.Conv3D(2, 2), (3, 3, 3, 2), 8 * 8 * 2 * 2),
    # transposed: every input position scatters a full kernel
    (L.Conv2DTranspose(4, 3, strides=2), (5, 5, 3), 25 * 9 * 3 * 4),
    (L.DepthwiseConv2D(3, depth_multiplier=2), (8, 8, 3), 6 * 6 * 9 * 6),
    (L.SeparableConv2D(7, 3, depth_multiplier=2), (8, 8, 3),
     6 * 6 * (9 * 6 + 6 * 7)),
    (L.Dense(7), (5,), 5 * 7),
    (L.Dense(7), (4, 4, 5), 16 * 5 * 7),
    (L.BatchNormalization(), (4, 4, 5), 0),
    (L.MaxPooling2D(2), (4, 4, 5), 0),
])
def test_single_layer_macs(layer, shape, macs):
  model = keras.Sequential([keras.Input(shape), layer])
  assert keras_epi.count_macs(model) == macs


def test_nested_models_and_shared_layers_count_every_call():
  inner = keras.Sequential([keras.Input((4,)), L.Dense(3)], name="inner")
  shared = L.Dense(4)
  x = keras.Input((4,))
  y = inner(shared(shared(x)))
  assert keras_epi.count_macs(keras.Model(x, y)) == 16 + 16 + 12


def test_resnet50_macs_match_the_known_figure():
  # Keras' ResNet50 (v1: stride in the first 1x1 conv) has 3.86 GMACs of
  # conv + dense at 224x224; torchvision's v1.5 has 4.09.
  macs = keras_epi.count_macs(keras.applications.ResNet50(weights=None))
  assert macs == 3_857_973_248


def test_unknown_spatial_size_is_a_clear_error():
  model = keras.Sequential([keras.Input((None, None, 3)), L.Conv2D(4, 3)])
  with pytest.raises(ValueError, match="conv2d.*unknown shape.*keras.Input"):
    keras_epi.count_macs(model)


def _residual_model():
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 3, padding="same", name="stem")(x)
  a = L.Conv2D(16, 3, padding="same", name="inner")(h)
  b = L.Conv2D(8, 3, padding="same", name="out")(a)
  h = L.Add(name="add")([h, b])
  return keras.Model(x, L.Dense(2, name="fc")(
      L.GlobalAveragePooling2D()(h)))


def test_keep_residual_meets_the_budget_inside_the_blocks():
  model = _residual_model()
  groups = keras_epi.channel_groups(model)
  assert [(g.name, g.residual) for g in groups] == [("stem", True),
                                                    ("inner", False)]
  # The stream scores lowest, so a plain plan cuts it first.
  scores = {"stem": np.arange(8.0), "inner": 100 + np.arange(16.0)}
  plain = keras_epi.select_channels(model, scores, 0.25, keep_stem=False)
  assert len(plain["stem"]) == 2 and len(plain["inner"]) == 16
  kept = keras_epi.select_channels(model, scores, 0.25, keep_stem=False,
                                   keep_residual=True)
  assert "stem" not in kept
  np.testing.assert_array_equal(kept["inner"], np.arange(4, 16))
  macs = keras_epi.select_channels(model, scores, 0.4, budget="macs",
                                   keep_stem=False, keep_residual=True)
  # MACs: stem 13824, inner and out 73728 each, fc 16. Keeping k inner
  # channels leaves 13840 + 147456 * k / 16; k = 9 would be 0.60004 of the
  # dense 161296, just over the budget, so k = 8.
  assert len(macs["inner"]) == 8
  pruned = keras_epi.prune_model(model, macs)
  assert keras_epi.count_macs(pruned) == 13840 + 147456 * 8 // 16


def test_keep_residual_with_nothing_else_to_prune_is_a_clear_error():
  model = _residual_model()
  with pytest.raises(ValueError, match="keep_residual=True"):
    keras_epi.select_channels(model, {"stem": np.arange(8.0)}, 0.5,
                              keep_stem=False, keep_residual=True)
