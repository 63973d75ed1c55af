"""Tests of keras_epi.graph: which channels are coupled."""

import keras
import numpy as np
import pytest

import keras_epi

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def _groups(model, **kwargs):
  return {g.name: g for g in keras_epi.channel_groups(model, **kwargs)}


def _members(group):
  return {name: pos for name, pos in group.members}


def test_chain_one_group_per_producer_with_pass_through_members():
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(4, 3, name="a")(x)
  h = L.BatchNormalization(name="bn")(h)
  h = L.ReLU(name="relu")(h)
  h = L.MaxPooling2D(name="pool")(h)
  h = L.Conv2D(5, 1, name="b")(h)
  y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D(name="gap")(h))
  groups = _groups(keras.Model(x, y))

  assert sorted(groups) == ["a", "b"]  # the classifier "fc" is an output
  assert groups["a"].size == 4 and groups["b"].size == 5
  assert groups["a"].member_names() == ["a", "bn", "relu", "pool"]
  for _, positions in groups["a"].members:
    np.testing.assert_array_equal(positions, np.arange(4))
  assert groups["b"].member_names() == ["b", "gap"]


def test_add_couples_producers_into_one_group_named_by_the_first():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  b = L.Conv2D(4, 1, name="b")(x)
  s = L.Add(name="add")([a, b])
  y = L.Dense(2, name="fc")(L.Flatten(name="flat")(s))
  groups = _groups(keras.Model(x, y))

  assert list(groups) == ["a"]
  assert groups["a"].size == 4
  assert groups["a"].member_names() == ["a", "b", "add", "flat"]


def test_residual_marks_sum_like_merges_not_gates():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  b = L.Conv2D(4, 1, name="b")(x)
  s = L.Add(name="add")([a, b])
  g = L.Conv2D(4, 1, activation="sigmoid", name="gate")(
      L.GlobalAveragePooling2D(keepdims=True)(s))
  c = L.Conv2D(6, 1, name="c")(L.Multiply(name="se")([s, g]))
  y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(c))
  groups = _groups(keras.Model(x, y))
  assert groups["a"].residual  # a + b: a residual stream
  assert not groups["c"].residual
  assert "residual=True" in repr(groups["a"])
  # MobileNetV2: the streams of stages with more than one block are
  # residual, the expanded channels inside the blocks are not.
  model = keras.applications.MobileNetV2(weights=None,
                                         input_shape=(32, 32, 3))
  by_name = _groups(model)
  assert by_name["block_1_project"].residual  # + block_2_project
  assert not by_name["block_2_expand"].residual
  assert not by_name["block_16_project"].residual  # a stage of one block
  assert sorted(g.size for g in by_name.values() if g.residual) == [
      24, 32, 64, 96, 160]


@pytest.mark.parametrize("merge", [L.Subtract, L.Multiply, L.Average,
                                   L.Maximum, L.Minimum])
def test_every_elementwise_merge_couples(merge):
  x = keras.Input((6, 3))
  a = L.Conv1D(4, 1, name="a")(x)
  b = L.Conv1D(4, 1, name="b")(x)
  y = L.Dense(2)(L.GlobalAveragePooling1D()(merge(name="m")([a, b])))
  assert list(_groups(keras.Model(x, y))) == ["a"]


def test_concatenate_members_list_offset_slices():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(3, 1, name="a")(x)
  b = L.Conv2D(2, 1, name="b")(x)
  c = L.Concatenate(name="cat")([a, b])
  h = L.BatchNormalization(name="bn")(c)
  y = L.Dense(2)(L.GlobalMaxPooling2D(keepdims=True)(h))
  groups = _groups(keras.Model(x, y))

  np.testing.assert_array_equal(_members(groups["a"])["bn"], [0, 1, 2])
  np.testing.assert_array_equal(_members(groups["b"])["bn"], [3, 4])
  np.testing.assert_array_equal(_members(groups["b"])["cat"], [3, 4])


def test_concatenate_on_a_spatial_axis_couples_like_a_merge():
  x = keras.Input((4, 4, 3))
  a = L.Conv2D(3, 1, name="a")(x)
  b = L.Conv2D(3, 1, name="b")(x)
  c = L.Concatenate(axis=1, name="cat")([a, b])
  y = L.Dense(2)(L.GlobalAveragePooling2D()(c))
  groups = _groups(keras.Model(x, y))
  assert list(groups) == ["a"] and groups["a"].size == 3


def test_depthwise_multiplier_and_flatten_give_2d_positions():
  x = keras.Input((4, 4, 3))
  a = L.Conv2D(3, 1, name="a")(x)
  d = L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", name="dw")(a)
  f = L.Flatten(name="flat")(L.MaxPooling2D(name="pool")(d))
  y = L.Dense(2)(f)
  members = _members(_groups(keras.Model(x, y))["a"])

  np.testing.assert_array_equal(members["dw"], [[0, 1], [2, 3], [4, 5]])
  # After 2x2 pooling: 4 positions x 6 channels, channel-minor.
  assert members["flat"].shape == (3, 8)
  np.testing.assert_array_equal(members["flat"][1],
                                [2, 3, 8, 9, 14, 15, 20, 21])


def test_model_inputs_and_outputs_are_never_in_a_group():
  x = keras.Input((4, 4, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  b = L.Conv2D(4, 1, name="b")(a)
  y = L.Add(name="add")([a, b])  # coupled with the output: all fixed
  assert _groups(keras.Model(x, y)) == {}


@pytest.mark.parametrize("make_layer", [
    lambda: L.LayerNormalization(),
    lambda: L.Softmax(),
    lambda: L.Activation("softmax"),
    lambda: L.UnitNormalization(),
    lambda: L.Reshape((2, 8)),
    lambda: L.Permute((2, 1)),
    lambda: L.Conv1D(4, 1, groups=2),  # general grouped conv
])
def test_layers_that_mix_channels_keep_their_inputs(make_layer):
  x = keras.Input((4, 4))
  a = L.Conv1D(4, 1, name="a")(x)
  h = make_layer()(a)
  y = L.Dense(2)(L.Flatten()(h))
  assert "a" not in _groups(keras.Model(x, y))


def test_group_normalization_couples_the_channels_of_each_group():
  """Each norm group is normalised on its own, so removing whole groups is
  exact: the channels of a group are one unit of the channel group."""
  x = keras.Input((4, 4))
  a = L.Conv1D(6, 1, name="a")(x)
  h = L.GroupNormalization(groups=3, name="gn")(a)
  y = L.Dense(2)(L.Flatten()(h))
  groups = _groups(keras.Model(x, y))
  assert groups["a"].size == 3
  members = dict(groups["a"].members)
  # Unit g is channels 2g and 2g + 1 of the conv and of the norm.
  np.testing.assert_array_equal(members["a"], [[0, 1], [2, 3], [4, 5]])
  np.testing.assert_array_equal(members["gn"], [[0, 1], [2, 3], [4, 5]])


def test_layer_normalization_over_a_spatial_axis_keeps_channels_prunable():
  x = keras.Input((4, 4))
  a = L.Conv1D(4, 1, name="a")(x)
  h = L.LayerNormalization(axis=1, name="ln")(a)
  y = L.Dense(2)(L.Flatten()(h))
  assert "ln" in _groups(keras.Model(x, y))["a"].member_names()


def test_dense_and_conv_with_softmax_activation_are_fixed():
  x = keras.Input((4,))
  a = L.Dense(4, activation="softmax", name="a")(x)
  y = L.Dense(2)(a)
  assert _groups(keras.Model(x, y)) == {}


def test_grouped_conv_with_one_input_channel_per_group_is_depthwise_like():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  g = L.Conv2D(8, 3, groups=4, name="g")(a)
  y = L.Dense(2)(L.GlobalAveragePooling2D()(g))
  groups = _groups(keras.Model(x, y))
  assert list(groups) == ["a"]
  np.testing.assert_array_equal(_members(groups["a"])["g"],
                                [[0, 1], [2, 3], [4, 5], [6, 7]])


def test_squeeze_excite_couples_gate_with_features():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(6, 1, name="a")(x)
  s = L.GlobalAveragePooling2D(name="squeeze")(a)
  s = L.Reshape((1, 1, 6), name="reshape")(s)
  s = L.Conv2D(2, 1, activation="relu", name="reduce")(s)
  s = L.Conv2D(6, 1, activation="sigmoid", name="expand")(s)
  h = L.Multiply(name="excite")([a, s])
  y = L.Dense(2)(L.GlobalAveragePooling2D(name="gap")(h))
  groups = _groups(keras.Model(x, y))
  assert sorted(groups) == ["a", "reduce"]
  assert groups["a"].member_names() == ["a", "squeeze", "reshape", "expand",
                                        "excite", "gap"]


def test_keras_ops_in_the_graph_pass_channels_through():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  h = keras.ops.relu(a) * 2.0 + a
  y = L.Dense(2)(L.GlobalAveragePooling2D()(h))
  groups = _groups(keras.Model(x, y))
  assert list(groups) == ["a"] and groups["a"].size == 4


def test_nested_and_sequential_models_are_followed():
  inner_in = keras.Input((8, 8, 4))
  inner_out = L.Conv2D(3, 1, name="conv")(L.ReLU(name="relu")(inner_in))
  inner = keras.Model(inner_in, inner_out, name="inner")
  seq = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(5, 1, name="c1"),
                          L.BatchNormalization(name="bn")], name="seq")
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  h = L.Concatenate(name="cat")([inner(a), seq(x)])
  y = L.Dense(2)(L.GlobalAveragePooling2D()(h))
  groups = _groups(keras.Model(x, y))

  assert sorted(groups) == ["a", "inner/conv", "seq/c1"]
  assert groups["a"].member_names() == ["a", "inner/relu"]
  np.testing.assert_array_equal(_members(groups["seq/c1"])["cat"],
                                [3, 4, 5, 6, 7])


def test_top_level_sequential():
  model = keras.Sequential([keras.Input((8, 8, 3)), L.Conv2D(4, 3, name="a"),
                            L.ReLU(name="r"), L.Flatten(name="f"),
                            L.Dense(2, name="fc")])
  groups = _groups(model)
  assert list(groups) == ["a"]
  assert groups["a"].member_names() == ["a", "r", "f"]


def test_shared_layer_ties_the_channels_it_reads():
  x1, x2 = keras.Input((4, 4, 3)), keras.Input((4, 4, 3))
  a, b = L.Conv2D(4, 1, name="a")(x1), L.Conv2D(4, 1, name="b")(x2)
  shared = L.Conv2D(5, 1, name="shared")
  h = L.Add()([shared(a), shared(b)])
  y = L.Dense(2)(L.GlobalAveragePooling2D()(h))
  groups = _groups(keras.Model([x1, x2], y))
  assert sorted(groups) == ["a", "shared"]  # a and b tied by the shared kernel
  assert "b" in groups["a"].member_names()


def test_names_are_stable_across_builds():
  def build():
    keras.backend.clear_session()
    return keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3))
  first = [(g.name, g.size) for g in keras_epi.channel_groups(build())]
  second = [(g.name, g.size) for g in keras_epi.channel_groups(build())]
  assert first == second and first


def test_ignore_keeps_a_layer_and_what_is_coupled_to_it():
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  b = L.Conv2D(4, 1, name="b")(a)
  y = L.Dense(2)(L.GlobalAveragePooling2D()(b))
  model = keras.Model(x, y)
  assert sorted(_groups(model)) == ["a", "b"]
  assert sorted(_groups(model, ignore=["b"])) == []  # b reads a, writes b


# -- errors ------------------------------------------------------------------


def test_unknown_channel_mixing_layer_is_kept_whole_with_a_warning(caplog):
  # A layer no rule covers is probed (tests/layers_test.py has the rest):
  # one that mixes channels keeps its input and output channels, and the
  # warning says how to register it.
  x = keras.Input((8, 8, 3))
  a = L.Conv2D(4, 1, name="a")(x)
  h = L.Lambda(lambda t: keras.ops.flip(t, axis=-1),
               output_shape=lambda s: s, name="flip")(a)
  model = keras.Model(x, L.Dense(2)(L.GlobalAveragePooling2D()(h)))
  with caplog.at_level("WARNING"):
    assert _groups(model) == {}
  assert "'flip' (Lambda) mixes its channels" in caplog.text
  assert "keras_epi.register_layer(Lambda" in caplog.text
  assert _groups(model, ignore=["flip"]) == {}


def test_channels_first_is_rejected_with_the_layer_name():
  x = keras.Input((3, 8, 8))
  h = L.Conv2D(4, 1, data_format="channels_first", name="cf")(x)
  model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
  with pytest.raises(ValueError, match="cf: Conv2D: data_format="):
    keras_epi.channel_groups(model)


def test_ignore_with_unknown_name_is_rejected():
  model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
  with pytest.raises(ValueError, match=r"`ignore` names layers .*\['nope'\]"):
    keras_epi.channel_groups(model, ignore=["nope"])


def test_ignore_as_a_string_is_rejected():
  model = keras.Sequential([keras.Input((4,)), L.Dense(3), L.Dense(2)])
  with pytest.raises(ValueError, match="collection of layer names"):
    keras_epi.channel_groups(model, ignore="dense")


def test_not_a_model_is_rejected():
  with pytest.raises(ValueError, match="Expected a keras.Model"):
    keras_epi.channel_groups(L.Dense(3))


def test_unbuilt_sequential_is_rejected():
  with pytest.raises(ValueError, match="keras.Input"):
    keras_epi.channel_groups(keras.Sequential([L.Dense(3)]))


def test_subclassed_model_is_rejected():
  class Net(keras.Model):

    def __init__(self):
      super().__init__()
      self.d = L.Dense(2)

    def call(self, x):
      return self.d(x)

  net = Net()
  net(np.zeros((1, 3), "float32"))
  with pytest.raises(ValueError, match="Subclassed models"):
    keras_epi.channel_groups(net)


def test_split_then_residual_gives_members_that_carry_part_of_a_group():
  # CSPNet: one conv's channels are split; one half runs through a residual
  # block. The block's conv carries only that half of the group: -1 marks
  # the channels it does not carry, and the group stays prunable.
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  h = L.Conv2D(8, 1, name="exp")(x)
  a, b = keras.ops.split(h, 2, axis=-1)
  b = L.Add(name="add")([b, L.Conv2D(4, 3, padding="same", name="blk")(b)])
  h = L.Concatenate(name="cat")([a, b])
  model = keras.Model(x, L.Dense(2, name="fc")(L.Flatten()(h)))
  groups = _groups(model)
  assert list(groups) == ["exp"] and groups["exp"].size == 8
  members = _members(groups["exp"])
  np.testing.assert_array_equal(members["blk"], [-1, -1, -1, -1, 0, 1, 2, 3])
  np.testing.assert_array_equal(members["exp"], np.arange(8))
  scores = keras_epi.magnitude_importance(model, list(groups.values()))
  kernel = {n: keras.ops.convert_to_numpy(model.get_layer(n).kernel)
            for n in ("exp", "blk")}
  norms = {n: np.linalg.norm(k.reshape(-1, k.shape[-1]), axis=0) /
           np.sqrt(np.prod(k.shape[:-1])) for n, k in kernel.items()}
  np.testing.assert_allclose(
      scores["exp"], norms["exp"] + np.r_[np.zeros(4), norms["blk"]],
      rtol=1e-6)
  xs = np.random.default_rng(0).normal(size=(2, 6, 6, 3)).astype("float32")
  zeroed = model
  keep = {"exp": [0, 2, 5, 7]}
  from tests import oracle  # pylint: disable=g-import-not-at-top
  oracle.zero_channels(zeroed, list(groups.values()), keep)
  pruned = keras_epi.prune_model(zeroed, keep)
  assert pruned.get_layer("blk").filters == 2
  assert oracle.relative_error(pruned(xs), zeroed(xs)) < 1e-5
