"""Tests of keras_epi.count_macs against hand-computed counts, and of the
budgeted choice of channels (keras_epi.select_channels)."""

import keras
import numpy as np
import pytest

import keras_epi

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

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
  with pytest.raises(ValueError, match="conv2d.*unknown shape.*input_shape="):
    keras_epi.count_macs(model)


def test_open_input_shape_counted_at_the_given_size():
  x = keras.Input((None, None, 3))
  h = L.Conv2D(4, 3, name="a")(x)
  y = L.Conv2D(2, 1, name="b")(L.MaxPooling2D(2)(h))
  model = keras.Model(x, y)
  # 10x10 -> a: 8x8 positions x 9 x 3 x 4; pooled 4x4 -> b: 16 x 4 x 2.
  assert keras_epi.count_macs(model, input_shape=(10, 10, 3)) == (
      64 * 9 * 3 * 4 + 16 * 4 * 2)
  assert keras_epi.count_macs(model, input_shape=[(10, 10, 3)],
                              per_layer=True) == {"a": 64 * 9 * 3 * 4,
                                                  "b": 16 * 4 * 2}


@pytest.mark.parametrize("shape", [(10, 10), (10, 10, 4), (0, 10, 3),
                                   (None, 10, 3), "10x10", [(10, 10, 3)] * 2])
def test_input_shape_that_does_not_fit_is_refused(shape):
  model = keras.Sequential([keras.Input((None, None, 3)), L.Conv2D(4, 3)])
  with pytest.raises(ValueError, match="`input_shape` must give.*received "
                     "input_shape="):
    keras_epi.count_macs(model, input_shape=shape)


def test_macs_of_a_plan_without_building_it_and_per_layer():
  model = _residual_model()
  groups = keras_epi.channel_groups(model)
  keep = {g.name: np.arange(g.size // 2) for g in groups[1:]}
  per_layer = keras_epi.count_macs(model, keep, per_layer=True)
  pruned = keras_epi.prune_model(model, keep)
  assert sum(per_layer.values()) == keras_epi.count_macs(model, keep) == (
      keras_epi.count_macs(pruned))
  assert per_layer == keras_epi.count_macs(pruned, per_layer=True)
  assert keras_epi.count_macs(model, {}) == keras_epi.count_macs(model)
  with pytest.raises(ValueError, match="`keep` names group 'nope'"):
    keras_epi.count_macs(model, {"nope": [0]})


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


def test_uniform_plan_keeps_the_same_rounded_fraction_of_every_group():
  model = _residual_model()
  sizes = {g.name: g.size for g in keras_epi.channel_groups(model)}
  keep = keras_epi.uniform_plan(model, 0.4, round_to=4)
  # round(0.4 * 8 / 4) * 4 = 4 of 8; round(0.4 * 16 / 4) * 4 = 8 of 16.
  assert {k: len(v) for k, v in keep.items()} == {
      name: {8: 4, 16: 8}[size] for name, size in sizes.items()
      if size in (8, 16)}
  scores = {name: np.arange(size)[::-1] * 0 + np.arange(size)
            for name, size in sizes.items()}
  best = keras_epi.uniform_plan(model, 0.5, scores=scores)
  for name, kept in best.items():
    np.testing.assert_array_equal(kept, np.arange(sizes[name] // 2,
                                                  sizes[name]))
  assert keras_epi.uniform_plan(model, 1.0) == {}
  with pytest.raises(ValueError, match="`fraction` must be a number in"):
    keras_epi.uniform_plan(model, 0.0)
