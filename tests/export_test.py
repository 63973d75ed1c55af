"""Tests of keras_epi.fold_batchnorm: same inference outputs, fewer layers."""

import keras
import numpy as np
import pytest

import keras_epi
from tests import oracle

L = keras.layers


def _bn():
  return L.BatchNormalization(name="bn")


def _model(producer, shape, after=None, bn=_bn):
  keras.utils.set_random_seed(0)
  x = keras.Input(shape)
  y = bn()(producer()(x))
  if after is not None:
    y = after(y)
  model = keras.Model(x, y)
  oracle.randomize_statistics(model)
  return model


def _check_same_function(model, folded, batch=3, tolerance=1e-5):
  x = np.random.default_rng(1).normal(
      size=(batch, *model.input_shape[1:])).astype("float32")
  want = keras.ops.convert_to_numpy(model(x, training=False))
  got = keras.ops.convert_to_numpy(folded(x, training=False))
  assert oracle.relative_error(got, want) <= tolerance


# Each producer followed by a BatchNormalization over its output channels.
FOLDABLE = {
    "conv1d": (lambda: L.Conv1D(6, 3, name="p"), (9, 3)),
    "conv2d": (lambda: L.Conv2D(6, 3, name="p"), (7, 7, 3)),
    "conv2d_no_bias": (lambda: L.Conv2D(6, 3, use_bias=False, name="p"),
                       (7, 7, 3)),
    "conv2d_groups": (lambda: L.Conv2D(6, 3, groups=3, name="p"), (7, 7, 3)),
    "conv3d": (lambda: L.Conv3D(6, 2, name="p"), (4, 4, 4, 3)),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(6, 3, name="p"),
                         (5, 5, 3)),
    "depthwise": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2,
                                            use_bias=False, name="p"),
                  (7, 7, 3)),
    "separable": (lambda: L.SeparableConv2D(6, 3, depth_multiplier=2,
                                            name="p"), (7, 7, 3)),
    "dense": (lambda: L.Dense(6, name="p"), (5,)),
    "dense_on_4d": (lambda: L.Dense(6, name="p"), (3, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(FOLDABLE))
def test_folds_each_producer_type(name):
  producer, shape = FOLDABLE[name]
  model = _model(producer, shape)
  before = [w.copy() for w in model.get_weights()]
  folded = keras_epi.fold_batchnorm(model)
  assert folded.folded_batchnorms == ["bn"]
  assert isinstance(folded.get_layer("bn"), L.Identity)
  assert folded.get_layer("p").use_bias
  _check_same_function(model, folded)
  for a, b in zip(before, model.get_weights()):  # the caller's model is kept
    np.testing.assert_array_equal(a, b)


def test_folds_scale_and_center_off():
  model = _model(lambda: L.Conv2D(4, 1, name="p"), (3, 3, 2),
                 bn=lambda: L.BatchNormalization(scale=False, center=False,
                                                 name="bn"))
  folded = keras_epi.fold_batchnorm(model)
  assert folded.folded_batchnorms == ["bn"]
  _check_same_function(model, folded)


def test_leaves_channels_first():
  # TensorFlow's CPU kernels cannot run NCHW convolutions, so this model is
  # only built, not called; folding it is simply not attempted.
  x = keras.Input((3, 6, 6))
  y = L.Conv2D(4, 3, data_format="channels_first", name="p")(x)
  model = keras.Model(x, L.BatchNormalization(axis=1, name="bn")(y))
  folded = keras_epi.fold_batchnorm(model)
  assert not folded.folded_batchnorms
  assert isinstance(folded.get_layer("bn"), L.BatchNormalization)


NOT_FOLDABLE = {
    # The conv's activation sits between it and the normalisation.
    "activation": (lambda: L.Conv2D(4, 3, activation="relu", name="p"),
                   lambda: L.BatchNormalization(name="bn")),
    # The normalisation is over a spatial axis, not the channels.
    "other_axis": (lambda: L.Conv2D(4, 3, name="p"),
                   lambda: L.BatchNormalization(axis=1, name="bn")),
    # No producer: a pooling layer feeds the normalisation.
    "no_producer": (lambda: L.MaxPooling2D(name="p"),
                    lambda: L.BatchNormalization(name="bn")),
}


@pytest.mark.parametrize("name", sorted(NOT_FOLDABLE))
def test_leaves_unfoldable_batchnorm(name):
  producer, bn = NOT_FOLDABLE[name]
  model = _model(producer, (6, 6, 3), bn=bn)
  folded = keras_epi.fold_batchnorm(model)
  assert not folded.folded_batchnorms
  assert isinstance(folded.get_layer("bn"), L.BatchNormalization)
  _check_same_function(model, folded)


def test_leaves_batchnorm_whose_input_is_read_twice():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  c = L.Conv2D(4, 3, name="p")(x)
  y = L.Add()([L.BatchNormalization(name="bn")(c), c])
  model = keras.Model(x, y)
  oracle.randomize_statistics(model)
  folded = keras_epi.fold_batchnorm(model)
  assert not folded.folded_batchnorms
  _check_same_function(model, folded)


def test_nested_and_sequential_models():
  keras.utils.set_random_seed(0)
  inner = keras.Sequential([keras.Input((6, 6, 4)),
                            L.DepthwiseConv2D(3, padding="same", name="dw"),
                            L.BatchNormalization(name="bn"), L.ReLU(6.0)],
                           name="inner")
  x = keras.Input((8, 8, 3))
  y = L.BatchNormalization(name="bn0")(L.Conv2D(4, 3, name="c0")(x))
  y = inner(y)
  y = L.GlobalAveragePooling2D()(y)
  model = keras.Model(x, L.Dense(5, name="logits")(y))
  oracle.randomize_statistics(model)
  folded = keras_epi.fold_batchnorm(model)
  assert sorted(folded.folded_batchnorms) == ["bn0", "inner/bn"]
  assert isinstance(folded.get_layer("inner"), keras.Sequential)
  _check_same_function(model, folded)
  # No shared variables: changing the copy leaves the original alone.
  folded.get_layer("inner").get_layer("dw").kernel.assign(
      np.zeros(folded.get_layer("inner").get_layer("dw").kernel.shape))
  assert np.abs(keras.ops.convert_to_numpy(
      inner.get_layer("dw").kernel)).sum() > 0


def test_keras_round_trip(tmp_path):
  model = _model(lambda: L.Conv2D(6, 3, name="p"), (7, 7, 3),
                 after=L.ReLU(6.0))
  folded = keras_epi.fold_batchnorm(model)
  path = str(tmp_path / "folded.keras")
  folded.save(path)
  loaded = keras.saving.load_model(path)
  _check_same_function(folded, loaded, tolerance=0)


@pytest.mark.parametrize("builder", ["MobileNetV2", "ResNet50"])
def test_applications_fold_and_prune(builder):
  """Every BatchNormalization of these models follows a conv: all fold, the
  outputs are unchanged, and folding a pruned model works the same."""
  keras.utils.set_random_seed(0)
  model = getattr(keras.applications, builder)(
      weights=None, input_shape=(32, 32, 3), classes=10,
      classifier_activation=None)
  oracle.randomize_statistics(model)
  n_bn = sum(isinstance(l, L.BatchNormalization) for l in model.layers)
  folded = keras_epi.fold_batchnorm(model)
  assert len(folded.folded_batchnorms) == n_bn
  _check_same_function(model, folded, batch=2, tolerance=1e-4)
  groups = keras_epi.channel_groups(model)
  keep = oracle.random_keep(groups, np.random.default_rng(0))
  pruned = keras_epi.prune_model(model, keep)
  _check_same_function(pruned, keras_epi.fold_batchnorm(pruned), batch=2,
                       tolerance=1e-4)


def test_rejects_a_non_model():
  with pytest.raises(ValueError, match="Expected a keras.Model"):
    keras_epi.fold_batchnorm(L.Dense(3))
