"""The models users have, pruned as they are (tests/user_models.py): the
dead-channel oracle, the class and API kept, `.keras` reload where Keras can
reload the dense model, and `keras_epi.fit` with an EPICallback; then one
test per message that a model or argument keras_epi refuses gets."""

import os
import warnings

import keras
import keras_hub
import numpy as np
import pytest

import keras_epi
from keras_epi import state as state_lib
from tests import oracle
from tests import user_models

L = keras.layers


def _build(name):
  model, shape = user_models.USER_MODELS[name]()
  oracle.randomize_statistics(model)
  return model, shape


def _inputs(shape, n=2, seed=1):
  return np.random.default_rng(seed).uniform(0, 1, (n, *shape)).astype(
      "float32")


def _reloads(model, path):
  """Whether Keras saves and loads `model` (the dense one, as Keras is)."""
  try:
    model.save(path)
    keras.saving.load_model(path)
    return True
  except Exception:  # pylint: disable=broad-except
    return False


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(user_models.USER_MODELS))
def test_user_model_prunes_exactly_and_reloads_where_keras_does(name,
                                                                 tmp_path):
  model, shape = _build(name)
  x = _inputs(shape)
  dense_reloads = _reloads(model, tmp_path / "dense.keras")
  _, pruned, keep, error = oracle.check_equivalence(model, x, copy=False)
  assert keep, "the oracle removed nothing"
  assert error <= 1e-4, f"{name}: relative error {error:.2e}"
  # The user's class (or, for a class that rebuilds itself from constructor
  # arguments, a subclass of it that saves its plan).
  assert isinstance(pruned, type(model))
  assert keras_epi.count_macs(pruned, input_shape=shape) < (
      keras_epi.count_macs(model, input_shape=shape))
  if dense_reloads:
    pruned.save(tmp_path / "pruned.keras")
    loaded = keras.saving.load_model(tmp_path / "pruned.keras")
    assert isinstance(loaded, type(model))
    assert oracle.relative_error(loaded(x, training=False),
                                 pruned(x, training=False)) <= 1e-6


def test_the_models_keras_cannot_reload_are_the_expected_ones(tmp_path):
  """DepthToSpace has no **kwargs, PointNet's regularizer no get_config:
  Keras cannot reload those dense models, so the test above skips them."""
  reloads = {name: _reloads(_build(name)[0], tmp_path / f"{name}.keras")
             for name in user_models.USER_MODELS}
  assert {n for n, ok in reloads.items() if not ok} == {
      "super_resolution", "point_cloud"}


@pytest.mark.filterwarnings("ignore::UserWarning")
@pytest.mark.parametrize("name", sorted(user_models.USER_MODELS))
def test_user_model_trains_with_epi_and_continues_pruned(name):
  model, shape = _build(name)
  if isinstance(model, keras_hub.models.Task):
    model.compile(optimizer=keras.optimizers.SGD(0.01),
                  loss=keras.losses.SparseCategoricalCrossentropy(
                      from_logits=True))
    x = (_inputs(shape, n=8) * 255).astype("float32")
    y = np.arange(8) % 3
  else:
    model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
    x = _inputs(shape, n=8)
    y = np.random.default_rng(0).normal(
        size=(8, *(d if d is not None else shape[i]
                   for i, d in enumerate(model.outputs[0].shape[1:])))
    ).astype("float32")
    if name == "super_resolution":  # 12x12 in, 24x24 out
      y = np.zeros((8, 24, 24, 1), "float32")
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             verbose=0, keep_stem=False)
  small, history = keras_epi.fit(model, x, y, epochs=2, batch_size=4,
                                 callbacks=[cb], verbose=0)
  assert cb.prune_epoch == 1 and small is cb.pruned_model
  assert isinstance(small, type(model))
  loss = "custom_loss" if name == "custom_train_step" else "loss"
  assert np.isfinite(history.history[loss]).all()
  # Open input sizes: MACs at the sizes of the training data.
  assert np.isfinite(history.history["macs_fraction"]).all()
  assert history.history["macs_fraction"][1] < 1.0


def test_a_subclass_keeps_its_train_step_after_the_cut():
  model, shape = _build("custom_train_step")
  model.compile(optimizer=keras.optimizers.SGD(0.01), loss="mse")
  x, y = _inputs(shape, n=16), np.zeros((16, 3), "float32")
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             verbose=0)
  small, history = keras_epi.fit(model, x, y, epochs=3, batch_size=8,
                                 callbacks=[cb], verbose=0)
  assert type(small) is user_models.CustomModel
  # Its own step logged its own metric in every epoch, after the cut too.
  assert len(history.history["custom_loss"]) == 3
  assert "loss" not in history.history


def test_a_keras_hub_task_keeps_its_preprocessor_and_predicts_raw_images():
  model, shape = _build("hub_classifier_with_preprocessor")
  keep = keras_epi.uniform_plan(model, 0.5)
  pruned = keras_epi.prune_model(model, keep)
  assert isinstance(pruned, keras_hub.models.ResNetImageClassifier)
  assert pruned.preprocessor is not None
  assert pruned.preprocessor is not model.preprocessor
  raw = (_inputs(shape, n=3) * 255).astype("float32")
  probabilities = pruned.predict(raw, verbose=0)
  assert probabilities.shape == (3, 3)
  # predict runs the preprocessor: the same as the backbone on x / 255.
  np.testing.assert_allclose(
      probabilities, keras.ops.convert_to_numpy(pruned(raw / 255.0)),
      rtol=1e-5, atol=1e-5)


def test_open_input_sizes_in_model_fit_need_input_shape_for_macs():
  model, shape = _build("super_resolution")
  model.compile(optimizer="sgd", loss="mse")
  x, y = _inputs(shape, n=4), np.zeros((4, 24, 24, 1), "float32")
  # A neuron budget runs; its MACs are not known (NaN) without input_shape.
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             verbose=0)
  history = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
  assert np.isnan(history.history["macs_fraction"]).all()
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             verbose=0, input_shape=shape)
  history = model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])
  assert 0 < history.history["macs_fraction"][0] < 1
  cb = keras_epi.EPICallback(prune_ratio=0.5, budget="macs")
  with pytest.raises(ValueError, match=r"budget='macs'.*open input size.*"
                     r"EPICallback\(input_shape=\.\.\.\)"):
    model.fit(x, y, epochs=1, verbose=0, callbacks=[cb])


# -- one test per message --------------------------------------------------


class _FixedWidth(L.Layer):
  """Checks its input width on concrete inputs only (symbolic calls pass):
  once cut, the pruned model breaks when called, not when built."""

  def __init__(self, width, **kwargs):
    super().__init__(**kwargs)
    self.width = width

  def call(self, x):
    if x.shape[0] is not None and x.shape[-1] != self.width:
      raise ValueError(f"expected width {self.width}")
    return x

  def get_config(self):
    return {**super().get_config(), "width": self.width}


def test_a_pruned_model_that_fails_when_called_names_the_layer():
  keras_epi.register_layer(_FixedWidth, channels="elementwise")
  try:
    x = keras.Input((4,))
    h = L.Dense(6, name="d")(x)
    model = keras.Model(x, L.Dense(2)(_FixedWidth(6, name="fixed")(h)))
    with pytest.raises(ValueError, match=r"(?s)layer 'fixed' "
                       r"\(_FixedWidth\) fails when called \(at batch size "
                       r"1\).*ignore=\['fixed'\]"):
      keras_epi.prune_model(model, {"d": [0, 1, 2]})
  finally:
    keras_epi.unregister_layer(_FixedWidth)


class _ScaleAtBatch2(L.Layer):
  """A per-channel scale (probed) that runs at batch size 2 only."""

  def build(self, input_shape):
    self.scale = self.add_weight(shape=(input_shape[-1],),
                                 initializer="random_normal")

  def call(self, x):
    return keras.ops.reshape(x * self.scale, (2, *x.shape[1:]))


def test_a_model_that_runs_at_one_batch_size_only_is_checked_there():
  x = keras.Input((4,))
  h = L.Dense(6, name="d")(x)
  model = keras.Model(x, L.Dense(2, name="out")(_ScaleAtBatch2(name="s")(h)))
  keep = {"d": np.array([0, 1, 2])}
  oracle.zero_channels(model, keras_epi.channel_groups(model), keep)
  pruned = keras_epi.prune_model(model, keep)
  xs = np.random.default_rng(0).normal(size=(2, 4)).astype("float32")
  np.testing.assert_allclose(pruned(xs), model(xs), atol=1e-6)
  assert pruned.get_layer("s").scale.shape == (3,)


class _Width(L.Layer):
  """Builds its weight from a width it ignores in its config, and has no
  `**kwargs`: neither its config nor its copy can be rebuilt narrower."""

  def __init__(self, units):
    super().__init__()
    self.units = units

  def build(self, input_shape):
    self.kernel = self.add_weight(shape=(8, self.units), name="kernel")

  def call(self, x):
    return x @ self.kernel


def test_a_layer_that_cannot_be_rebuilt_narrower_is_named():
  keras_epi.register_layer(_Width, channels="produce",
                           weights={"kernel": {0: "in", 1: "out"}},
                           width="units")
  try:
    x = keras.Input((8,))
    h = L.Dense(8, name="d")(x)
    model = keras.Model(x, L.Dense(2)(_Width(4)(h)))
    with pytest.raises(ValueError, match=r"(?s)cannot rebuild layer "
                       r"'__width' \(_Width\).*cannot be made from its "
                       r"config.*nor its copy rebuilt.*ignore=\['__width'\]"):
      keras_epi.prune_model(model, {"d": [0, 1, 2]})
  finally:
    keras_epi.unregister_layer(_Width)


class _Untraceable(L.Layer):
  """A per-channel composite layer whose call cannot be traced."""

  def __init__(self, **kwargs):
    super().__init__(**kwargs)
    self.inner = L.ReLU()

  def call(self, x):
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    return self.inner(tf.math.abs(x))


def test_an_untraceable_per_channel_composite_must_be_registered():
  x = keras.Input((4, 4, 3))
  h = L.Conv2D(4, 1, name="c")(x)
  model = keras.Model(x, L.Conv2D(2, 1)(_Untraceable(name="u")(h)))
  with pytest.raises(ValueError, match=r"(?s)u: _Untraceable: a composite "
                     r"layer "
                     r"whose `call` could not be traced.*register_layer"):
    keras_epi.channel_groups(model)


class _Scale(L.Layer):
  """A per-channel scale whose weight's width comes from its config."""

  def __init__(self, width, **kwargs):
    super().__init__(**kwargs)
    self.width = width
    self.scale = self.add_weight(shape=(width,), name="scale")

  def call(self, x):
    return x * self.scale

  def get_config(self):
    return {**super().get_config(), "width": self.width}


def test_a_layer_that_does_not_take_its_pruned_inputs_is_named():
  keras_epi.register_layer(_Scale, channels="elementwise")  # no weights
  try:
    x = keras.Input((4,))
    h = _Scale(6, name="scale")(L.Dense(6, name="d")(x))
    model = keras.Model(x, L.Dense(2)(h))
    with pytest.raises(ValueError, match=r"layer 'scale' \(_Scale\) does not "
                       r"take its pruned inputs.*ignore=\['scale'\]"):
      keras_epi.prune_model(model, {"d": [0, 1, 2]})
  finally:
    keras_epi.unregister_layer(_Scale)


def test_no_prunable_group_names_the_layers_that_keep_channels():
  x = keras.Input((4, 8))
  h = L.LayerNormalization(name="ln")(L.Dense(8, name="d")(x))
  model = keras.Model(x, L.Dense(2)(h))
  scores = {g.name: np.ones(g.size) for g in keras_epi.channel_groups(model)}
  with pytest.raises(ValueError, match=r"No group to prune.*kept whole by "
                     r"'ln' \(LayerNormalization\)"):
    keras_epi.select_channels(model, scores, 0.5, keep_stem=False)


def test_a_prune_epoch_beyond_the_fit_is_said():
  model = keras.Sequential([keras.Input((4,)), L.Dense(8), L.Dense(2)])
  model.compile(optimizer="sgd", loss="mse")
  cb = keras_epi.EPICallback(policy="fixed", prune_epoch=5, keep_stem=False)
  with pytest.warns(UserWarning, match=r"AtEpoch\(5\) prunes after 5 dense "
                    r"epochs, but this fit has 2.*Lower `prune_epoch`"):
    model.fit(np.zeros((8, 4)), np.zeros((8, 2)), epochs=2, verbose=0,
              callbacks=[cb])
  assert cb.prune_epoch is None


def test_batchnorm_without_scale_or_center_warns_of_zero_taylor_scores():
  x = keras.Input((4, 4, 3))
  h = L.BatchNormalization(center=False, scale=False, name="bn")(
      L.Conv2D(8, 3, name="c")(x))
  model = keras.Model(x, L.Dense(2)(L.Flatten()(L.Conv2D(4, 1)(h))))
  model.compile(optimizer="sgd", loss="mse")
  cb = keras_epi.EPICallback(policy="fixed", prune_epoch=1, keep_stem=False)
  with pytest.warns(UserWarning, match=r"group 'c' is normalised by 'bn' "
                    r"\(BatchNormalization with center=False, scale=False\)"
                    r".*criterion='magnitude'"):
    model.fit(np.zeros((4, 4, 4, 3)), np.zeros((4, 2)), epochs=1, verbose=0,
              callbacks=[cb])


def _two_convs():
  x = keras.Input((4, 4, 3))
  h = L.Conv2D(8, 1, name="a")(x)
  return keras.Model(x, L.Conv2D(2, 1)(L.Conv2D(8, 1, name="b")(h)))


def test_scores_that_do_not_rank_are_said():
  model = _two_convs()
  scores = {g.name: np.zeros(g.size) for g in keras_epi.channel_groups(model)}
  with pytest.warns(UserWarning, match="every score of the groups it cuts is "
                    "0: the scores do not rank the channels"):
    keras_epi.select_channels(model, scores, 0.5, keep_stem=False)


def test_a_plan_that_removes_nothing_is_said():
  model = _two_convs()
  scores = {g.name: np.arange(g.size, dtype=float)
            for g in keras_epi.channel_groups(model)}
  with pytest.warns(UserWarning, match=r"removes no channel \(ratio=0.01, "
                    r"round_to=16"):
    keep = keras_epi.select_channels(model, scores, 0.01, round_to=16,
                                     keep_stem=False)
  assert all(len(v) == 8 for v in keep.values())


@pytest.mark.parametrize("bad", ["high", {"x": 1}, [["a"]] * 8])
def test_scores_that_are_not_numbers_are_named(bad):
  model = _two_convs()
  with pytest.raises(ValueError, match=r"`scores\['b'\]` must be an array "
                     "of numbers"):
    keras_epi.select_channels(model, {"b": bad}, 0.5, keep_stem=False)


def test_a_failed_state_write_leaves_no_temporary_file(tmp_path,
                                                       monkeypatch):
  state_file = state_lib.StateFile(tmp_path)

  def failing_rename(*args, **kwargs):
    raise OSError("disk full")

  monkeypatch.setattr(os, "replace", failing_rename)  # the atomic rename
  with pytest.raises(OSError, match="disk full"):
    state_file.save(state_lib.RunState({"model": "m", "groups": []}))
  assert os.listdir(tmp_path) == []


def test_group_normalization_prunes_whole_groups():
  model, shape = _build("group_norm")
  groups = {g.name: g.size for g in keras_epi.channel_groups(model)}
  # 16 channels in 4 norm groups, 8 in 2: the units are the norm groups.
  assert sorted(groups.values()) == [2, 4]
  with warnings.catch_warnings():
    warnings.simplefilter("error", UserWarning)  # no warning on the way
    pruned = keras_epi.prune_model(model, {g: [0] for g in groups})
  norms = [l for l in pruned.layers if isinstance(l, L.GroupNormalization)]
  assert [n.groups for n in norms] == [1, 1]
  assert [n.gamma.shape[0] for n in norms] == [4, 4]
  assert pruned(_inputs(shape)).shape == (2, 3)


@pytest.mark.filterwarnings("ignore::UserWarning")
def test_a_latency_budget_on_open_input_sizes():
  model, shape = _build("super_resolution")
  table = keras_epi.LatencyTable.measure(
      model, batch_size=2, widths=(0.5, 1.0), repeats=1, warmup=0,
      calibrate=(), input_shape=shape)
  assert table.metadata["input_shape"] == [list(shape)]
  model.compile(optimizer="sgd", loss="mse")
  x, y = _inputs(shape, n=4), np.zeros((4, 24, 24, 1), "float32")
  cb = keras_epi.EPICallback(prune_ratio=0.2, budget="latency",
                             latency_table=table, policy="fixed",
                             prune_epoch=1, verbose=0, keep_stem=False)
  small, _ = keras_epi.fit(model, x, y, epochs=2, batch_size=2, verbose=0,
                           callbacks=[cb])
  assert cb.prune_epoch == 1
  assert keras_epi.count_macs(small, input_shape=shape) < (
      keras_epi.count_macs(model, input_shape=shape))


def test_a_hub_model_whose_config_does_not_give_it_back_reloads(tmp_path):
  """keras_hub's EfficientNet backbone rebuilt from its config has another
  top width than the one it was made with: the pruned model is saved as its
  functional graph instead of its recipe, and reloads equal."""
  from tests import hub_models  # pylint: disable=g-import-not-at-top
  model, shape = hub_models.HUB_MODELS["EfficientNetV1"]()
  pruned = keras_epi.prune_model(model, keras_epi.uniform_plan(model, 0.5))
  pruned.save(tmp_path / "p.keras")
  loaded = keras.saving.load_model(tmp_path / "p.keras")
  assert isinstance(loaded, type(model))
  x = _inputs(shape)
  assert oracle.relative_error(loaded(x), pruned(x)) <= 1e-6
