"""Tests of keras_epi.count_macs against hand-computed counts."""

import keras
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
