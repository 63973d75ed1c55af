"""Tests of keras_epi.prune_model: sliced weights and unchanged outputs."""

import keras
import numpy as np
import pytest

import keras_epi
from tests import oracle

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def _weights(layer):
  return {w.name: keras.ops.convert_to_numpy(w) for w in layer.weights}


def _two_layer_model(producer, consumer, shape):
  """Input -> producer (named "p") -> consumer (named "c") -> output."""
  keras.utils.set_random_seed(0)
  x = keras.Input(shape)
  y = consumer(producer(x))
  model = keras.Model(x, y)
  oracle.randomize_statistics(model)
  return model


# (producer, consumer, input shape, producer weight -> out-channel axis,
#  consumer weight -> in-channel axis)
SLICING_CASES = {
    "conv1d": (lambda: L.Conv1D(6, 3, name="p"),
               lambda: L.Conv1D(2, 3, name="c"), (9, 3),
               {"kernel": 2, "bias": 0}, {"kernel": 1}),
    "conv2d": (lambda: L.Conv2D(6, 3, name="p"),
               lambda: L.Conv2D(2, 3, name="c"), (7, 7, 3),
               {"kernel": 3, "bias": 0}, {"kernel": 2}),
    "conv3d": (lambda: L.Conv3D(6, 2, name="p"),
               lambda: L.Conv3D(2, 2, name="c"), (4, 4, 4, 3),
               {"kernel": 4, "bias": 0}, {"kernel": 3}),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(6, 3, name="p"),
                         lambda: L.Conv2DTranspose(2, 3, name="c"), (5, 5, 3),
                         {"kernel": 2, "bias": 0}, {"kernel": 3}),
    "separable": (lambda: L.SeparableConv2D(6, 3, depth_multiplier=2,
                                            name="p"),
                  lambda: L.SeparableConv2D(2, 3, name="c"), (7, 7, 3),
                  {"pointwise_kernel": 3, "bias": 0},
                  {"depthwise_kernel": 2, "pointwise_kernel": 2}),
    "dense": (lambda: L.Dense(6, name="p"), lambda: L.Dense(2, name="c"),
              (5,), {"kernel": 1, "bias": 0}, {"kernel": 0}),
    "dense_on_4d": (lambda: L.Dense(6, name="p"),
                    lambda: L.Dense(2, name="c"), (3, 3, 4),
                    {"kernel": 1, "bias": 0}, {"kernel": 0}),
    "conv_into_batchnorm": (lambda: L.Conv2D(6, 1, name="p"),
                            lambda: L.BatchNormalization(name="c"), (3, 3, 2),
                            {"kernel": 3, "bias": 0},
                            {"gamma": 0, "beta": 0, "moving_mean": 0,
                             "moving_variance": 0}),
    "conv_into_prelu": (lambda: L.Conv2D(6, 1, name="p"),
                        lambda: L.PReLU(name="c"), (3, 3, 2),
                        {"kernel": 3, "bias": 0}, {"alpha": 2}),
}


@pytest.mark.parametrize("case", sorted(SLICING_CASES))
def test_weights_are_np_delete_slices(case):
  producer, consumer, shape, p_axes, c_axes = SLICING_CASES[case]
  if case in ("conv_into_batchnorm", "conv_into_prelu"):
    # The consumer is the model output: add a head so "p" can be pruned.
    def consumer_with_head(make=consumer):
      layer = make()
      return lambda t: L.Dense(2, name="head")(layer(t))
    consumer = consumer_with_head
  model = _two_layer_model(producer(), consumer(), shape)
  removed = np.array([1, 4])
  keep = {"p": np.delete(np.arange(6), removed)}

  pruned = keras_epi.prune_model(model, keep)

  old_p, new_p = _weights(model.get_layer("p")), _weights(pruned.get_layer("p"))
  for name, axis in p_axes.items():
    np.testing.assert_array_equal(new_p[name],
                                  np.delete(old_p[name], removed, axis=axis))
  old_c, new_c = _weights(model.get_layer("c")), _weights(pruned.get_layer("c"))
  for name, axis in c_axes.items():
    if name == "pointwise_kernel" and case == "separable":
      continue  # the pointwise kernel reads the depthwise output, below
    np.testing.assert_array_equal(new_c[name],
                                  np.delete(old_c[name], removed, axis=axis))
  assert set(new_c) == set(old_c)


def test_depthwise_multiplier_slices_its_own_and_the_consumers_weights():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  p = L.Conv2D(4, 1, name="p")(x)
  d = L.DepthwiseConv2D(3, depth_multiplier=2, name="dw")(p)
  s = L.SeparableConv2D(3, 1, depth_multiplier=2, name="sep")(d)
  model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(s)))
  oracle.randomize_statistics(model)

  pruned = keras_epi.prune_model(model, {"p": [0, 2, 3]})

  old, new = _weights(model.get_layer("dw")), _weights(pruned.get_layer("dw"))
  np.testing.assert_array_equal(new["kernel"],
                                np.delete(old["kernel"], 1, axis=2))
  np.testing.assert_array_equal(new["bias"], np.delete(old["bias"], [2, 3]))
  old, new = (_weights(model.get_layer("sep")),
              _weights(pruned.get_layer("sep")))
  # sep reads dw's 8 channels (input channel c at 2c and 2c+1): 2 and 3 go.
  np.testing.assert_array_equal(new["depthwise_kernel"],
                                np.delete(old["depthwise_kernel"], [2, 3], 2))
  np.testing.assert_array_equal(
      new["pointwise_kernel"],
      np.delete(old["pointwise_kernel"], [4, 5, 6, 7], axis=2))


def test_flatten_into_dense_removes_every_spatial_copy_of_a_channel():
  keras.utils.set_random_seed(0)
  x = keras.Input((2, 2, 1))
  p = L.Conv2D(3, 1, name="p")(x)
  model = keras.Model(x, L.Dense(2, name="fc")(L.Flatten()(p)))

  pruned = keras_epi.prune_model(model, {"p": [0, 2]})

  old = _weights(model.get_layer("fc"))["kernel"]
  new = _weights(pruned.get_layer("fc"))["kernel"]
  np.testing.assert_array_equal(new, np.delete(old, [1, 4, 7, 10], axis=0))


def test_grouped_conv_depthwise_like_updates_filters_and_groups():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  p = L.Conv2D(4, 1, name="p")(x)
  g = L.Conv2D(8, 3, groups=4, name="g")(p)
  model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(g)))

  pruned = keras_epi.prune_model(model, {"p": [1, 3]})

  layer = pruned.get_layer("g")
  assert (layer.filters, layer.groups) == (4, 2)
  old = _weights(model.get_layer("g"))["kernel"]
  np.testing.assert_array_equal(_weights(layer)["kernel"],
                                old[..., [2, 3, 6, 7]])


# -- the output-equivalence oracle on small hand-built models ---------------


def _conv_zoo():  # pylint: disable=too-many-statements
  """Small models, each exercising a few ops, all zero-preserving."""
  zoo = {}

  x = keras.Input((12, 12, 3))
  h = L.Conv2D(8, 3, padding="same", use_bias=False)(x)
  h = L.BatchNormalization()(h)
  h = L.ReLU(6.0)(h)
  h = L.ZeroPadding2D(1)(h)
  h = L.DepthwiseConv2D(3, depth_multiplier=2)(h)
  h = L.BatchNormalization()(h)
  h = L.LeakyReLU(0.1)(h)
  h = L.Cropping2D(1)(h)
  h = L.SeparableConv2D(12, 3, padding="same", depth_multiplier=2)(h)
  h = L.PReLU()(h)
  h = L.AveragePooling2D(2)(h)
  h = L.Conv2DTranspose(6, 3, strides=2, padding="same")(h)
  h = L.UpSampling2D()(h)
  h = L.MaxPooling2D(2)(h)
  h = L.Conv2D(8, 3, groups=2, padding="same")(h)  # general grouped: fixed
  h = L.Conv2D(8, 3, groups=8, padding="same")(h)  # depthwise-like
  h = L.Dropout(0.5)(h)
  h = L.Dense(5)(h)  # on a 4-D tensor
  y = L.Dense(3)(L.Flatten()(h))
  zoo["conv_ops"] = (keras.Model(x, y), (12, 12, 3))

  x = keras.Input((8, 8, 3))
  a = L.Conv2D(6, 3, padding="same", activation="relu")(x)
  s = L.GlobalAveragePooling2D()(a)
  s = L.Reshape((1, 1, 6))(s)
  s = L.Conv2D(2, 1, activation="swish")(s)
  s = L.Conv2D(6, 1, activation="sigmoid")(s)
  h = L.Multiply()([a, s])
  b = L.Conv2D(6, 1)(h)
  h = L.Add()([h, b])
  c = L.Conv2D(6, 1)(h)
  h = L.Subtract()([h, c])
  d = L.Conv2D(6, 1)(h)
  h = L.Average()([h, d])
  e = L.Conv2D(6, 1)(h)
  h = L.Maximum()([h, e])
  f = L.Conv2D(6, 1)(h)
  h = L.Minimum()([h, f])
  h = L.Concatenate()([h, L.Conv2D(4, 1)(x), h])
  h = L.BatchNormalization()(h)
  h = keras.ops.relu(h) * 2.0
  h = L.GlobalMaxPooling2D(keepdims=True)(h)
  y = L.Dense(3)(L.Flatten()(h))
  zoo["merges_se_concat_ops"] = (keras.Model(x, y), (8, 8, 3))

  x = keras.Input((10, 3))
  h = L.Conv1D(6, 3, activation="relu")(x)
  h = L.ZeroPadding1D(1)(h)
  h = L.DepthwiseConv1D(3)(h)
  h = L.SeparableConv1D(5, 3, activation="tanh")(h)
  h = L.Cropping1D(1)(h)
  h = L.MaxPooling1D(2)(h)
  h = L.UpSampling1D()(h)
  # center=False: with a bias along time, zeroed channels would not stay 0.
  h = L.LayerNormalization(axis=1, center=False)(h)
  h = L.Conv1DTranspose(4, 3)(h)
  h = L.Conv1D(4, 3)(h)
  y = L.Dense(2)(L.GlobalAveragePooling1D()(h))
  zoo["conv1d_ops"] = (keras.Model(x, y), (10, 3))

  x = keras.Input((5, 5, 5, 2))
  h = L.Conv3D(4, 2, activation="relu")(x)
  h = L.ZeroPadding3D(1)(h)
  h = L.Conv3DTranspose(3, 2)(h)
  h = L.MaxPooling3D(2)(h)
  h = L.Conv3D(4, 1)(L.UpSampling3D()(h))
  h = L.Cropping3D(1)(h)
  y = L.Dense(2)(L.GlobalAveragePooling3D()(h))
  zoo["conv3d_ops"] = (keras.Model(x, y), (5, 5, 5, 2))

  inner_in = keras.Input((8, 8, 6))
  inner = keras.Model(
      inner_in, L.Conv2D(5, 3, padding="same")(L.ReLU()(inner_in)),
      name="inner")
  seq = keras.Sequential([keras.Input((8, 8, 5)), L.Conv2D(4, 1),
                          L.BatchNormalization(), L.ReLU()], name="seq")
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(6, 3, padding="same")(x)
  h = seq(inner(a))
  h2 = seq(L.Conv2D(5, 1)(x))  # the nested Sequential is shared
  y = L.Dense(2)(L.GlobalAveragePooling2D()(L.Add()([h, h2])))
  zoo["nested_and_shared"] = (keras.Model(x, y), (8, 8, 3))

  zoo["sequential"] = (keras.Sequential([
      keras.Input((8, 8, 3)), L.Conv2D(8, 3), L.BatchNormalization(),
      L.Activation("relu"), L.MaxPooling2D(2), L.Conv2D(6, 3),
      L.ELU(), L.Flatten(), L.Dense(7), L.Dense(3)]), (8, 8, 3))
  return zoo


@pytest.mark.parametrize("name", sorted(_conv_zoo()))
def test_hand_built_models_zeroed_then_removed_give_same_output(name,
                                                               tmp_path):
  if name == "conv1d_ops" and keras.backend.backend() == "torch":
    pytest.skip("Keras 3.15's LayerNormalization(axis=1) fails on the torch "
                "backend, in the dense model too")
  keras.utils.set_random_seed(0)
  model, shape = _conv_zoo()[name]
  oracle.randomize_statistics(model)
  x = np.random.default_rng(0).normal(size=(3, *shape)).astype("float32")

  zeroed, pruned, keep, error = oracle.check_equivalence(model, x, seed=1)

  assert len(keep) >= 2
  assert error <= 1e-4, f"{name}: relative error {error:.2e}"
  assert np.abs(zeroed.predict(x, verbose=0)).max() > 0  # not degenerate
  assert keras_epi.count_macs(pruned) < keras_epi.count_macs(zeroed)
  assert pruned.count_params() < zeroed.count_params()
  assert type(pruned) is type(zeroed)  # pylint: disable=unidiomatic-typecheck
  path = tmp_path / "pruned.keras"
  pruned.save(path)
  np.testing.assert_allclose(
      keras.saving.load_model(path).predict(x, verbose=0),
      pruned.predict(x, verbose=0), rtol=1e-6, atol=1e-6)


def test_nested_models_stay_nested():
  model, _ = _conv_zoo()["nested_and_shared"]
  groups = keras_epi.channel_groups(model)
  pruned = keras_epi.prune_model(model, {g.name: [0] for g in groups})
  assert isinstance(pruned.get_layer("inner"), keras.Model)
  assert isinstance(pruned.get_layer("seq"), keras.Sequential)
  assert pruned.get_layer("inner").output.shape[-1] == 1


def test_ignored_unknown_layer_is_copied_unchanged():
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  h = L.Lambda(lambda t: t * 2.0, name="double")(a)
  b = L.Conv2D(4, 1, name="b")(h)
  model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(b)))
  xs = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")

  groups = keras_epi.channel_groups(model, ignore=["double"])
  keep = {"b": [0, 3]}
  oracle.zero_channels(model, groups, keep)  # a Lambda cannot be cloned

  pruned = keras_epi.prune_model(model, keep, ignore=["double"])

  assert [g.name for g in groups] == ["b"]
  assert oracle.relative_error(pruned.predict(xs, verbose=0),
                               model.predict(xs, verbose=0)) <= 1e-4
  assert pruned.get_layer("a").filters == 4
  assert pruned.get_layer("b").filters == 2


def test_pruned_model_shares_no_variables_with_the_input():
  model = keras.Sequential([keras.Input((4,)), L.Dense(3, name="a"),
                            L.Dense(2, name="b")])
  pruned = keras_epi.prune_model(model, {})
  pruned.get_layer("a").kernel.assign(np.zeros((4, 3)))
  assert np.abs(keras.ops.convert_to_numpy(
      model.get_layer("a").kernel)).sum() > 0


def test_trainable_flags_and_dtype_policies_survive():
  x = keras.Input((4,))
  a = L.Dense(3, name="a", dtype="mixed_float16")(x)
  b = L.Dense(3, name="frozen", trainable=False)(a)
  model = keras.Model(x, L.Dense(2)(b))
  pruned = keras_epi.prune_model(model, {"a": [0, 2]})
  assert pruned.get_layer("a").dtype_policy.name == "mixed_float16"
  assert not pruned.get_layer("frozen").trainable


# -- errors ------------------------------------------------------------------


def _small_model():
  x = keras.Input((4,))
  h = L.Dense(3, name="a")(x)
  return keras.Model(x, L.Dense(2, name="out")(h))


@pytest.mark.parametrize("keep, message", [
    ({"nope": [0]}, "`keep` names group 'nope'"),
    ({"a": []}, r"`keep\['a'\]` is empty"),
    ({"a": [0, 3]}, r"outside \[0, 3\)"),
    ({"a": [-1]}, r"outside \[0, 3\)"),
    ({"a": [0, 0]}, "repeated"),
    ({"a": [[0, 1]]}, "1-D sequence of integer"),
    ({"a": [0.5]}, "1-D sequence of integer"),
    ([("a", [0])], "must map group names"),
])
def test_bad_keep_is_rejected(keep, message):
  model = _small_model()
  with pytest.raises(ValueError, match=message):
    keras_epi.prune_model(model, keep)


def test_keep_accepts_ranges_sets_and_arrays():
  model = _small_model()
  for indices in (range(2), {0, 1}, np.array([0, 1]), (0, 1)):
    assert keras_epi.prune_model(model, {"a": indices}).get_layer(
        "a").units == 2
