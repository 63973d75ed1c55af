"""The model width through normalisation (``through_norms=True``).

A transformer's model width (embeddings, residual stream, attention input
and output projections, norms' scales) passes through LayerNormalization or
RMSNormalization, so cutting it is not exact: the norm's statistics change.
The oracle here is the definition of the approximate cut: the pruned model
must equal the same architecture built at the smaller width with every
weight sliced by hand (this file's own slicing, not the surgeon's), norms
normalising over the kept channels. Beside it: exact mode unchanged by
default, Embedding columns removed exactly, keras_hub's ViT and BERT
classifiers cut in width, saved and reloaded, EPI with the width through
keras_epi.fit, and the refusals.
"""

import keras
import numpy as np
import pytest

import keras_epi
from tests import oracle
from tests import transformer_models

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers
VOCAB, SEQ = 40, 6


def _block(width):
  """Embedding, pre-norm attention and MLP blocks, RMSNorm, a classifier."""
  ids = keras.Input((SEQ,), dtype="int32")
  e = L.Embedding(VOCAB, width, name="embed")(ids)
  h = L.LayerNormalization(name="ln0")(e)
  a = L.MultiHeadAttention(2, 8, name="mha")(h, h)
  s = L.Add(name="add1")([e, a])
  h = L.LayerNormalization(name="ln1")(s)
  f = L.Dense(32, activation="gelu", name="ff1")(h)
  f = L.Dense(width, name="ff2")(f)
  s = L.Add(name="add2")([s, f])
  h = L.RMSNormalization(name="rms")(s)
  y = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h))
  return keras.Model(ids, y)


# How each weight of `_block` follows the width: the axis it is cut on.
_WIDTH_AXIS = {
    "embed/embeddings": 1, "ln0/gamma": 0, "ln0/beta": 0, "ln1/gamma": 0,
    "ln1/beta": 0, "rms/scale": 0, "mha/query/kernel": 0,
    "mha/key/kernel": 0, "mha/value/kernel": 0,
    "mha/attention_output/kernel": 2, "mha/attention_output/bias": 0,
    "ff1/kernel": 0, "ff2/kernel": 1, "ff2/bias": 0, "head/kernel": 0,
}


def _dense_block(seed=0):
  keras.utils.set_random_seed(seed)
  model = _block(16)
  rng = np.random.default_rng(seed)
  for w in model.weights:  # norms' scales and offsets away from 1 and 0
    if w.path.split("/")[0] in ("ln0", "ln1", "rms"):
      w.assign(rng.normal(1.0 if w.name in ("gamma", "scale") else 0.0, 0.5,
                          w.shape).astype("float32"))
  x = rng.integers(0, VOCAB, (4, SEQ)).astype("int32")
  return model, x


def _sliced_by_hand(model, kept):
  """`_block` at ``len(kept)`` with every weight sliced here."""
  small = _block(len(kept))
  small(np.zeros((1, SEQ), "int32"))
  for new, old in zip(small.weights, model.weights):
    value = keras.ops.convert_to_numpy(old)
    axis = _WIDTH_AXIS.get(old.path)
    if axis is not None:
      value = np.take(value, kept, axis=axis)
    new.assign(value)
  return small


def test_the_width_cut_equals_the_block_built_narrower_with_its_weights():
  model, x = _dense_block()
  group = {g.name: g for g in keras_epi.channel_groups(
      model, through_norms=True)}["embed"]
  assert group.residual and {"embed", "ln0", "ln1", "rms", "mha", "ff2",
                             "add1", "add2"} <= set(group.member_names())
  kept = np.array([0, 2, 3, 7, 8, 11, 12, 15])
  pruned = keras_epi.prune_model(model, {"embed": kept}, through_norms=True)
  reference = _sliced_by_hand(model, kept)
  np.testing.assert_allclose(
      keras.ops.convert_to_numpy(pruned(x)),
      keras.ops.convert_to_numpy(reference(x)), rtol=1e-5, atol=1e-5)
  # Approximate: not the dense model's output.
  assert oracle.relative_error(pruned(x), model(x)) > 1e-3
  assert keras_epi.count_macs(pruned) == keras_epi.count_macs(reference)


def test_exact_mode_keeps_the_width_whole_and_names_the_norm():
  model, _ = _dense_block()
  names = [g.name for g in keras_epi.channel_groups(model)]
  assert names == ["mha:heads", "ff1"]
  with pytest.raises(ValueError, match="does not have"):
    keras_epi.prune_model(model, {"embed": np.arange(8)})
  with pytest.raises(ValueError, match="through_norms"):
    keras_epi.channel_groups(model, through_norms="yes")


def test_embedding_columns_are_channels_removed_exactly():
  keras.utils.set_random_seed(0)
  ids = keras.Input((SEQ,), dtype="int32")
  h = L.Embedding(VOCAB, 12, name="embed")(ids)
  h = L.Conv1D(8, 3, activation="relu", name="conv")(h)
  model = keras.Model(ids, L.Dense(2, name="head")(
      L.GlobalAveragePooling1D()(h)))
  x = np.random.default_rng(0).integers(0, VOCAB, (4, SEQ)).astype("int32")
  _, pruned, keep, error = oracle.check_equivalence(model, x)
  assert "embed" in keep and error <= 1e-6
  assert pruned.get_layer("embed").output_dim == len(keep["embed"])


@pytest.mark.parametrize("name, width_layer", [
    ("vit_classifier", "vit_patching_and_embedding"),
    ("bert_classifier", "token_embedding")])
def test_keras_hub_classifiers_are_cut_in_width_and_reload(name, width_layer,
                                                           tmp_path):
  model, x = getattr(transformer_models, name)()
  groups = {g.name: g for g in keras_epi.channel_groups(
      model, through_norms=True)}
  # Layer names carry a suffix where the process made such a model before.
  width_group = next(n for n in groups if n.endswith("/" + width_layer))
  assert groups[width_group].residual
  assert width_group not in {g.name for g in keras_epi.channel_groups(model)}
  keep = oracle.random_keep(groups.values(), np.random.default_rng(0))
  pruned = keras_epi.prune_model(model, keep, through_norms=True)
  assert type(pruned).__name__ == "Pruned" + type(model).__name__
  width = len(keep[width_group])
  assert all(w.shape[-1] == width for w in pruned.weights
             if w.path.endswith(("gamma", "beta")))
  out = keras.ops.convert_to_numpy(pruned(x))
  path = str(tmp_path / "pruned.keras")
  pruned.save(path)
  back = keras.saving.load_model(path, compile=False)
  np.testing.assert_allclose(keras.ops.convert_to_numpy(back(x)), out,
                             rtol=1e-6, atol=1e-6)


def test_epi_ranks_the_width_of_a_vit_with_heads_and_neurons():
  model, x = transformer_models.vit_classifier()
  x = np.concatenate([x] * 16)
  y = np.arange(len(x)) % 3
  model.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  cb = keras_epi.EPICallback(prune_ratio=0.5, prune_by=1, verbose=0,
                             through_norms=True)
  final, history = keras_epi.fit(model, x, y, batch_size=8, epochs=2,
                                 callbacks=[cb], verbose=0)
  width = next(g for g in keras_epi.channel_groups(model, through_norms=True)
               if g.name.endswith("/vit_patching_and_embedding"))
  assert cb.prune_epoch == 1 and width.name in cb.keep
  kept = len(cb.keep[width.name])  # the plan decides (scores differ by backend)
  assert final.backbone.get_layer(
      "vit_patching_and_embedding").hidden_dim == kept
  assert np.isfinite(history.history["loss"]).all()


def test_a_plain_model_fit_with_the_width_is_refused_before_training():
  model, _ = _dense_block()
  model.compile("sgd", keras.losses.SparseCategoricalCrossentropy(
      from_logits=True))
  before = [keras.ops.convert_to_numpy(w) for w in model.weights]
  x = np.random.default_rng(0).integers(0, VOCAB, (8, SEQ)).astype("int32")
  cb = keras_epi.EPICallback(through_norms=True, prune_by=1, verbose=0)
  with pytest.raises(ValueError, match=r"through_norms=True\) needs "
                     r"keras_epi.fit"):
    model.fit(x, np.arange(8) % 3, epochs=2, callbacks=[cb], verbose=0)
  for a, w in zip(before, model.weights):
    np.testing.assert_array_equal(a, keras.ops.convert_to_numpy(w))


def test_a_latency_budget_with_the_width_is_refused_before_training():
  with pytest.raises(ValueError, match="budget='latency'.*through_norms"):
    keras_epi.EPICallback(budget="latency", through_norms=True,
                          latency_table=object())
  with pytest.raises(ValueError, match="through_norms"):
    keras_epi.EPICallback(through_norms=1)


def test_convnext_stage_streams_become_groups_through_their_norms():
  model = keras.applications.ConvNeXtTiny(weights=None, classes=4,
                                          input_shape=(32, 32, 3))
  exact = keras_epi.channel_groups(model)
  width = keras_epi.channel_groups(model, through_norms=True)
  streams = [g for g in width if g.residual]
  assert len(exact) == 18 and len(width) == 22
  assert [g.size for g in streams] == [96, 192, 384, 768]
  keep = keras_epi.uniform_plan(model, 0.5, through_norms=True)
  pruned = keras_epi.prune_model(model, keep, through_norms=True)
  assert keras_epi.count_macs(pruned) == keras_epi.count_macs(
      model, keep, through_norms=True)
  x = np.random.default_rng(0).normal(size=(2, 32, 32, 3)).astype("float32")
  assert pruned(x).shape == (2, 4)
