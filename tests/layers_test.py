"""Tests of keras_epi.layers: the layer registry, register_layer, probing."""

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import layers as layers_lib
from tests import oracle
from tests import zoo_models

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


@keras.saving.register_keras_serializable(package="keras_epi_layers_test")
class ChannelScale(keras.layers.Layer):
  """A per-channel scale whose width lives in its config (like LayerScale)."""

  def __init__(self, width, **kwargs):
    super().__init__(**kwargs)
    self.width = width

  def build(self, input_shape):
    self.scale = self.add_weight(shape=(self.width,), name="scale",
                                 initializer="ones")

  def call(self, x):
    return x * self.scale

  def get_config(self):
    return {**super().get_config(), "width": self.width}


@keras.saving.register_keras_serializable(package="keras_epi_layers_test")
class MyDense(keras.layers.Layer):
  """A user's own producer: a dense layer with its own kernel."""

  def __init__(self, units, **kwargs):
    super().__init__(**kwargs)
    self.units = units

  def build(self, input_shape):
    self.kernel = self.add_weight(shape=(input_shape[-1], self.units),
                                  name="kernel")

  def call(self, x):
    return keras.ops.matmul(x, self.kernel)

  def get_config(self):
    return {**super().get_config(), "units": self.units}


@pytest.fixture
def registered():
  added = []

  def register(cls, **kwargs):
    added.append(cls)
    return keras_epi.register_layer(cls, **kwargs)

  yield register
  for cls in added:
    keras_epi.unregister_layer(cls)


def _scale_model():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  h = L.Conv2D(8, 3, padding="same", name="conv")(x)
  h = ChannelScale(8, name="scale")(h)
  h = L.ReLU(name="relu")(h)
  y = L.Dense(3, name="fc")(L.GlobalAveragePooling2D(name="gap")(h))
  model = keras.Model(x, y)
  model.get_layer("scale").scale.assign(np.linspace(0.5, 1.5, 8))
  return model


def test_register_elementwise_layer_with_width_in_config(registered, tmp_path):
  registered(ChannelScale, channels="elementwise", weights={"scale": -1},
             width="width")
  model = _scale_model()
  groups = keras_epi.channel_groups(model)
  assert [g.member_names() for g in groups] == [
      ["conv", "scale", "relu", "gap"]]
  keep = {"conv": [1, 4, 6]}
  small = keras_epi.prune_model(model, keep)
  assert small.get_layer("scale").width == 3
  np.testing.assert_allclose(
      keras.ops.convert_to_numpy(small.get_layer("scale").scale),
      np.linspace(0.5, 1.5, 8)[[1, 4, 6]], rtol=1e-6)
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
  zeroed, pruned, _, error = oracle.check_equivalence(model, x)
  assert error < 1e-5
  del zeroed, pruned
  path = tmp_path / "scale.keras"
  small.save(path)
  np.testing.assert_allclose(keras.saving.load_model(path).predict(
      x, verbose=0), small.predict(x, verbose=0), rtol=1e-5, atol=1e-6)


def test_register_producer_counts_macs_and_slices_both_axes(registered):
  registered(MyDense, channels="produce",
             weights={"kernel": {0: "in", 1: "out"}}, width="units",
             macs=lambda layer, i, o: int(np.prod(o[:-1])) * i[-1] * o[-1])
  keras.utils.set_random_seed(0)
  x = keras.Input((5,))
  h = MyDense(6, name="d1")(x)
  h = L.ReLU(name="relu")(h)
  y = MyDense(2, name="d2")(h)
  model = keras.Model(x, y)
  assert keras_epi.count_macs(model) == 5 * 6 + 6 * 2
  groups = keras_epi.channel_groups(model)
  assert [g.name for g in groups] == ["d1"]
  small = keras_epi.prune_model(model, {"d1": [0, 3]})
  kernel1 = keras.ops.convert_to_numpy(model.get_layer("d1").kernel)
  kernel2 = keras.ops.convert_to_numpy(model.get_layer("d2").kernel)
  np.testing.assert_array_equal(
      keras.ops.convert_to_numpy(small.get_layer("d1").kernel),
      kernel1[:, [0, 3]])
  np.testing.assert_array_equal(
      keras.ops.convert_to_numpy(small.get_layer("d2").kernel),
      kernel2[[0, 3]])
  assert keras_epi.count_macs(small) == 5 * 2 + 2 * 2
  # Magnitude importance reads the registered producer's filters.
  scores = keras_epi.magnitude_importance(model, groups)["d1"]
  np.testing.assert_allclose(
      scores, np.linalg.norm(kernel1, axis=0) / np.sqrt(5), rtol=1e-5)


@pytest.mark.parametrize("kwargs,match", [
    (dict(layer_class=int, channels="elementwise"), "layer_class"),
    (dict(layer_class=ChannelScale, channels="per_channel"), "channels"),
    (dict(layer_class=ChannelScale, channels="elementwise",
          weights={"scale": "last"}), r"weights\['scale'\]"),
    (dict(layer_class=ChannelScale, channels="elementwise",
          weights={"scale": {0: "sideways"}}), r"weights\['scale'\]"),
    (dict(layer_class=ChannelScale, channels="elementwise", width=3),
     "width"),
    (dict(layer_class=ChannelScale, channels="elementwise", macs=3), "macs"),
    (dict(layer_class=ChannelScale, channels="produce",
          weights={"scale": -1}, filters=("kernel",)), "filters"),
])
def test_register_layer_errors(kwargs, match):
  with pytest.raises(ValueError, match=match):
    keras_epi.register_layer(**kwargs)


def test_register_twice_needs_override_and_unregister_unknown_fails(
    registered):
  registered(ChannelScale, channels="elementwise", weights={"scale": -1})
  with pytest.raises(ValueError, match="override=True"):
    keras_epi.register_layer(ChannelScale, channels="fixed")
  rule = keras_epi.register_layer(ChannelScale, channels="fixed",
                                  override=True)
  assert layers_lib.rule_for(ChannelScale) is rule
  with pytest.raises(ValueError, match="MyDense is not registered"):
    keras_epi.unregister_layer(MyDense)


def test_fixed_registration_keeps_the_channels(registered):
  registered(ChannelScale, channels="fixed")
  groups = keras_epi.channel_groups(_scale_model())
  assert groups == []  # conv's channels reach a fixed layer


def test_unregistered_per_channel_layer_is_probed_and_checked():
  # Without registration: the probe finds ChannelScale per-channel, and the
  # surgeon finds the config key of its width ("width") by itself.
  model = _scale_model()
  assert [g.member_names() for g in keras_epi.channel_groups(model)] == [
      ["conv", "scale", "relu", "gap"]]
  x = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
  _, pruned, _, error = oracle.check_equivalence(model, x)
  assert error < 1e-5
  assert pruned.get_layer("scale").width == 4


def test_probe_tells_elementwise_from_mixing():
  x = keras.Input((4, 4, 6))
  # (output_shape: the torch backend cannot infer a Lambda's)
  flip = L.Lambda(lambda t: keras.ops.flip(t, axis=-1),
                  output_shape=lambda s: s, name="flip")
  double = L.Lambda(lambda t: 2.0 * t + 1.0, output_shape=lambda s: s,
                    name="double")
  model = keras.Model(x, [flip(x), double(x)])
  nodes = {n.operation.name: n for n in keras_epi._functional.topological_nodes(
      model) if n.operation.name in ("flip", "double")}
  shapes = [(4, 4, 6)]
  assert not keras_epi._probe.probe_elementwise(flip, nodes["flip"], shapes,
                                               shapes)
  assert keras_epi._probe.probe_elementwise(double, nodes["double"], shapes,
                                           shapes)


def test_mixing_unknown_layer_is_kept_whole_rest_prunes():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  h = L.Lambda(lambda t: keras.ops.flip(t, axis=-1),
               output_shape=lambda s: s, name="flip")(a)
  b = L.Conv2D(5, 1, name="b", activation="relu")(h)
  model = keras.Model(x, L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(b)))
  groups = {g.name: g for g in keras_epi.channel_groups(model)}
  assert list(groups) == ["b"]  # a's channels are kept: flip mixes them
  xs = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
  assert oracle.check_equivalence(model, xs, copy=False)[3] < 1e-5


def test_layer_that_cannot_be_probed_names_it_and_the_fix():
  x = keras.Input((6, 6, 3))
  a = L.Conv2D(4, 1, name="a")(x)

  class Broken(keras.layers.Layer):
    fails = False  # builds the model, then fails on data

    def call(self, t):
      if Broken.fails:
        raise RuntimeError("no calls on data")
      return t

  h = Broken(name="broken")(a)
  model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
  Broken.fails = True
  with pytest.raises(ValueError, match=r"(?s)broken: Broken.*register_layer"
                     r".*ignore=\['broken'\]"):
    keras_epi.channel_groups(model)
  assert keras_epi.channel_groups(model, ignore=["broken"]) == []


def test_per_channel_layer_with_channel_axis_not_last_asks_to_register():

  class Odd(keras.layers.Layer):

    def build(self, input_shape):
      self.w = self.add_weight(shape=(input_shape[-1], 1), name="w",
                               initializer="ones")

    def call(self, t):
      return t * keras.ops.reshape(self.w, (-1,))

  x = keras.Input((6, 6, 3))
  h = Odd(name="odd")(L.Conv2D(4, 1, name="a")(x))
  model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
  with pytest.raises(ValueError, match=r"(?s)odd: Odd.*'w' \(4, 1\).*"
                     r"register_layer\(Odd, channels='elementwise'"):
    keras_epi.channel_groups(model)


def test_ops_pad_split_concatenate_mean_prune_exactly():
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 3, padding="same", name="stem")(x)
  h = keras.ops.pad(h, ((0, 0), (1, 1), (1, 1), (0, 0)))
  a, b = keras.ops.split(h, 2, axis=-1)  # CSPNet's split of one producer
  a = L.Conv2D(6, 3, name="ca", activation="relu")(a)
  b = L.Conv2D(6, 3, name="cb", activation="relu")(b)
  h = keras.ops.concatenate([a, b], axis=-1)
  h = L.Conv2D(5, 1, name="mix")(h)
  y = L.Dense(3, name="fc")(keras.ops.mean(h, axis=(1, 2)))
  model = keras.Model(x, y)
  groups = {g.name: g for g in keras_epi.channel_groups(model)}
  assert sorted(groups) == ["ca", "cb", "mix", "stem"]
  xs = np.random.default_rng(0).normal(size=(2, 8, 8, 3)).astype("float32")
  # Uneven halves after the cut: the split is rebuilt at the new offsets.
  zeroed = oracle.copy_model(model)
  keep = {"stem": [0, 1, 2, 5], "ca": [0, 3], "mix": [1, 2, 4]}
  oracle.zero_channels(zeroed, list(groups.values()), keep)
  pruned = keras_epi.prune_model(zeroed, keep)
  assert oracle.relative_error(pruned(xs), zeroed(xs)) < 1e-5
  assert pruned.get_layer("ca").kernel.shape[-2] == 3
  assert pruned.get_layer("cb").kernel.shape[-2] == 1


def test_channels_first_counts_right_and_cannot_be_pruned():
  model, _ = zoo_models.build_channels_first()
  assert keras_epi.count_macs(model) == zoo_models.CHANNELS_FIRST_MACS
  with pytest.raises(ValueError, match="channels_first"):
    keras_epi.channel_groups(model)


def test_nested_model_with_open_shape_counts_with_outer_shapes():
  inner_in = keras.Input((None, None, 3))
  inner = keras.Model(inner_in, L.Conv2D(4, 3, padding="same",
                                         name="c")(inner_in), name="inner")
  x = keras.Input((10, 10, 3))
  y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(inner(x)))
  model = keras.Model(x, y)
  assert keras_epi.count_macs(model) == 10 * 10 * 9 * 3 * 4 + 4 * 2
  small = keras_epi.prune_model(model, {"inner/c": [0, 2]})
  assert keras_epi.count_macs(small) == 10 * 10 * 9 * 3 * 2 + 2 * 2
  assert small.get_layer("inner").inputs[0].shape[1:] == (None, None, 3)


def test_augmentation_layers_inside_the_model_pass_channels_through():
  model, shape = zoo_models.build_augment_all()
  groups = keras_epi.channel_groups(model)
  assert groups
  x = zoo_models.random_inputs(shape)
  assert oracle.check_equivalence(model, x)[3] < 1e-4


@pytest.mark.parametrize("name", ["custom_conv_bn_act", "custom_residual"])
def test_composite_custom_layer_is_pruned_through(name, tmp_path):
  model, shape = zoo_models.ZOO_MODELS[name]()
  oracle.randomize_statistics(model)
  x = zoo_models.random_inputs(shape)
  nodes_before = _node_counts(model)
  groups = keras_epi.channel_groups(model)
  assert any("/" in path for g in groups for path in g.member_names())
  # Looking inside the composite layers left the caller's layers as they
  # were (no graph nodes added to their sublayers).
  assert _node_counts(model) == nodes_before
  _, pruned, _, error = oracle.check_equivalence(model, x)
  assert error < 1e-4
  assert keras_epi.count_macs(pruned) < keras_epi.count_macs(model)
  path = tmp_path / "p.keras"
  pruned.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0),
                             pruned.predict(x, verbose=0), rtol=1e-5,
                             atol=1e-5)


def _node_counts(model):
  return [(l.name, len(l._inbound_nodes), len(l._outbound_nodes))  # pylint: disable=protected-access
          for l in model._flatten_layers(include_self=False, recursive=True)]  # pylint: disable=protected-access


@pytest.mark.parametrize("name", ["custom_channel_affine", "custom_residual"])
def test_users_layers_train_with_epi_then_save_and_load(name, tmp_path):
  model, shape = zoo_models.ZOO_MODELS[name]()
  model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  rng = np.random.default_rng(0)
  x = zoo_models.random_inputs(shape, batch=32)
  y = rng.integers(0, model.outputs[0].shape[-1], 32)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             verbose=0)
  small, history = keras_epi.fit(model, x, y, epochs=2, batch_size=16,
                                 callbacks=[cb], verbose=0)
  assert cb.prune_epoch == 1 and len(history.history["loss"]) == 2
  assert keras_epi.count_macs(small) < keras_epi.count_macs(model)
  path = tmp_path / "small.keras"
  small.save(path)
  loaded = keras.saving.load_model(path)
  np.testing.assert_allclose(loaded.predict(x, verbose=0),
                             small.predict(x, verbose=0), rtol=1e-5,
                             atol=1e-5)


def test_every_public_keras_layer_has_a_rule():
  # A Keras upgrade that adds a layer shows up here. Lambda is probed on
  # purpose (its function decides), Layer is the base of users' layers.
  if not keras.__version__.startswith("3.15."):
    pytest.skip(f"the table was checked against Keras 3.15, not "
                f"{keras.__version__}")
  missing = [name for name in dir(keras.layers)
             if isinstance(getattr(keras.layers, name), type) and
             issubclass(getattr(keras.layers, name), keras.layers.Layer) and
             layers_lib.rule_for(getattr(keras.layers, name)) is None]
  assert sorted(missing) == ["InputLayer", "Lambda", "Layer"]


def test_ops_reshape_with_a_fixed_newshape_keeps_channels_whole():
  # keras.ops.reshape keeps its literal newshape in a rebuilt graph, so the
  # channels it reshapes must not change.
  x = keras.Input((4, 4, 3))
  h = L.Conv2D(6, 1, name="a")(x)
  model = keras.Model(x, L.Dense(2)(keras.ops.reshape(h, (-1, 96))))
  assert keras_epi.channel_groups(model) == []
  assert keras_epi.count_macs(model) == 16 * 3 * 6 + 96 * 2
