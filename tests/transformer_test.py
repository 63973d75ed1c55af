"""Transformers: attention heads, MLP widths, keras_hub's encoders and LMs.

The oracle of the surgeon (tests/oracle.py) over every model of
tests/transformer_models.py: a random half of every group is made exactly
zero (an attention head through its value projection), then removed, and
the outputs must not change. Beside it, hand-counted MACs, Taylor scores of
heads against a NumPy reference, and EPI through keras_epi.fit.
"""

import logging

import keras
import numpy as np
import pytest

import keras_epi
from tests import oracle
from tests import transformer_models
from tests.helpers import loss_gradients

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers
MODELS = transformer_models.TRANSFORMERS


def _groups(model):
  return {g.name: g for g in keras_epi.channel_groups(model)}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_zeroed_heads_and_widths_removed_give_the_same_output(name, tmp_path):
  model, x = MODELS[name]()
  oracle.randomize_statistics(model)
  _, pruned, keep, error = oracle.check_equivalence(model, x, copy=False)
  assert keep, f"{name}: no group to prune"
  assert error <= 1e-4, f"{name}: relative error {error:.2e}"
  assert pruned.count_params() < model.count_params()
  path = str(tmp_path / "pruned.keras")
  pruned.save(path)
  reloaded = keras.saving.load_model(path)
  assert oracle.relative_error(reloaded(x, training=False),
                               pruned(x, training=False)) <= 1e-6


@pytest.mark.parametrize("name, expected", [
    ("encoder_block", {"mha:heads": 4, "ff1": 64}),
    ("grouped_query", {"gqa:heads": 2, "gate": 24}),
    ("bert", {"transformer_layer_0/self_attention_layer:heads": 2,
              "transformer_layer_0/feedforward_intermediate_dense": 64,
              "transformer_layer_1/self_attention_layer:heads": 2,
              "transformer_layer_1/feedforward_intermediate_dense": 64}),
    ("gemma", {"decoder_block_0/attention:heads": 2,
               "decoder_block_0/ffw_gating": 32,
               "decoder_block_1/attention:heads": 2,
               "decoder_block_1/ffw_gating": 32}),
])
def test_groups_are_the_heads_and_the_mlp_widths(name, expected):
  model, _ = MODELS[name]()
  assert {n: g.size for n, g in _groups(model).items()} == expected


def test_a_transformer_has_no_stem_and_prunes_at_the_default_settings():
  model, _ = transformer_models.encoder_block()
  scores = {n: np.arange(g.size, dtype=float)
            for n, g in _groups(model).items()}
  keep = keras_epi.select_channels(model, scores, 0.5)  # keep_stem=True
  assert set(keep) == {"mha:heads", "ff1"}
  # 34 of the 68 channels, a head counting as one: the lowest-scored.
  assert len(keep["mha:heads"]) + len(keep["ff1"]) == 34


def test_grouped_query_attention_removes_key_value_heads_with_their_queries():
  model, x = transformer_models.grouped_query()
  group = _groups(model)["gqa:heads"]
  members = dict(group.members)
  np.testing.assert_array_equal(members["gqa:heads"], [0, 1])
  # Query head h reads key-value head h // 2.
  np.testing.assert_array_equal(members["gqa:query_heads"], [[0, 1], [2, 3]])
  pruned = keras_epi.prune_model(model, {"gqa:heads": [1]})
  layer = pruned.get_layer("gqa")
  assert (layer.num_query_heads, layer.num_key_value_heads) == (2, 1)
  assert tuple(layer._query_dense.kernel.shape) == (16, 2, 4)  # pylint: disable=protected-access
  assert tuple(layer._value_dense.kernel.shape) == (16, 1, 4)  # pylint: disable=protected-access
  assert pruned(x).shape == (2, 2)


def test_cross_attention_keeps_its_inputs_and_prunes_its_output():
  model, _ = transformer_models.cross_attention()
  groups = _groups(model)
  assert {n: g.size for n, g in groups.items()} == {
      "cross:heads": 3, "cross": 10, "mlp": 8}
  pruned = keras_epi.prune_model(model, {"cross": [0, 2, 4], "cross:heads":
                                         [0, 2]})
  layer = pruned.get_layer("cross")
  assert layer.num_heads == 2
  assert tuple(layer._output_dense.kernel.shape) == (2, 4, 3)  # pylint: disable=protected-access
  assert tuple(layer._key_dense.kernel.shape) == (12, 2, 4)  # pylint: disable=protected-access


def test_attention_macs_are_counted_by_hand():
  model, _ = transformer_models.encoder_block()
  # T = 6 tokens of width d = 16, 4 heads of 8: the query, key and value
  # projections 3 * 6*16*4*8, the scores and their weighted sum
  # 4*6*6*(8+8), the output projection 6*4*8*16.
  dense = 3 * 6 * 16 * 4 * 8 + 4 * 6 * 6 * 16 + 6 * 4 * 8 * 16
  per_layer = keras_epi.count_macs(model, per_layer=True)
  assert per_layer["mha"] == dense == 14592
  # Two heads kept: every term halves.
  half = keras_epi.count_macs(model, {"mha:heads": [1, 3]}, per_layer=True)
  assert half["mha"] == dense // 2
  pruned = keras_epi.prune_model(model, {"mha:heads": [1, 3]})
  assert keras_epi.count_macs(pruned, per_layer=True)["mha"] == dense // 2


def test_a_mac_budget_weighs_a_head_against_the_mlp_by_its_cost():
  model, _ = transformer_models.encoder_block()
  scores = {"mha:heads": np.full(4, 1.0), "ff1": np.full(64, 0.1)}
  # A head costs 3648 MACs (its query, key and value projections 3*6*16*8,
  # its attention 6*6*16, its share of the output projection 6*8*16), an
  # MLP channel 192 (ff1 makes it, ff2 reads it: 2*6*16). Per MAC a head
  # scores 1.0 / 3648 and an MLP channel 0.1 / 192: the heads go first,
  # though their scores are 10x the MLP's. Of the dense 26928 MACs, ratio
  # 0.2 asks for 5386 fewer: two heads (7296).
  keep = keras_epi.select_channels(model, scores, 0.2, budget="macs")
  assert len(keep["mha:heads"]) == 2 and len(keep["ff1"]) == 64


def test_taylor_scores_of_heads_equal_a_numpy_reference():
  model, x = transformer_models.encoder_block()
  y = np.array([0, 2])
  loss = keras.losses.SparseCategoricalCrossentropy(from_logits=True)
  grads = {v.path: g for v, g in zip(model.trainable_variables,
                                     loss_gradients(model, loss, x, y))}
  values = {v.path: keras.ops.convert_to_numpy(v)
            for v in model.trainable_variables}
  s = np.zeros(4)
  for part in ("query", "key", "value"):
    for kind, axes in (("kernel", (0, 2)), ("bias", (1,))):
      key = f"mha/{part}/{kind}"
      s += (values[key] * grads[key]).sum(axis=axes)
  key = "mha/attention_output/kernel"
  s += (values[key] * grads[key]).sum(axis=(1, 2))
  model.compile(keras.optimizers.SGD(0.0), loss)
  cb = keras_epi.EPICallback(prune_ratio=0.5, verbose=0)
  model.fit(x, y, batch_size=2, epochs=1, shuffle=False, callbacks=[cb],
            verbose=0)
  np.testing.assert_allclose(cb.importance["mha:heads"], s ** 2, rtol=1e-4,
                             atol=1e-12)
  assert cb.importance["mha:heads"].max() > 0


def test_magnitude_of_a_head_is_the_norm_of_all_its_weights():
  model, _ = transformer_models.encoder_block()
  layer = model.get_layer("mha")
  rows = []
  for head in range(4):
    parts = [keras.ops.convert_to_numpy(w) for w in layer.weights]
    kernels = [parts[0][:, head], parts[1][head], parts[2][:, head],
               parts[3][head], parts[4][:, head], parts[5][head],
               parts[6][head]]
    rows.append(np.concatenate([k.ravel() for k in kernels]))
  rows = np.array(rows)
  want = np.linalg.norm(rows, axis=1) / np.sqrt(rows.shape[1])
  got = keras_epi.magnitude_importance(model, [_groups(model)["mha:heads"]])
  np.testing.assert_allclose(got["mha:heads"], want, rtol=1e-6)


def test_an_einsum_dense_that_is_not_a_dense_keeps_its_channels():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 8))
  h = L.EinsumDense("btd,df->btf", (6, 12), name="dense_like")(x)
  h = L.EinsumDense("btd,de->bet", (5, 6), name="mixes_time")(h)
  model = keras.Model(x, L.Dense(2)(L.Flatten()(h)))
  # mixes_time contracts the channels but puts time last: its input
  # (dense_like's channels) and its outputs are kept whole.
  assert _groups(model) == {}


@pytest.mark.parametrize("name", ["vit_classifier", "bert_classifier"])
def test_epi_prunes_a_transformer_task_and_trains_it_on(name):
  model, x = MODELS[name]()
  x = keras.tree.map_structure(lambda a: np.concatenate([a] * 16), x)
  y = np.arange(32) % 2
  model.compile(keras.optimizers.Adam(1e-3),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  cb = keras_epi.EPICallback(prune_ratio=0.5, prune_by=1, verbose=0)
  final, history = keras_epi.fit(model, x, y, batch_size=8, epochs=2,
                                 callbacks=[cb], verbose=0)
  assert cb.prune_epoch == 1 and type(final).__name__ == (
      "Pruned" + type(model).__name__)
  assert any(n.endswith(":heads") for n in cb.keep)
  assert np.isfinite(history.history["loss"]).all()
  assert final.predict(x, verbose=0).shape == (32, 3 if "vit" in name else 2)


def test_a_causal_lm_keeps_its_heads_and_still_generates(caplog):
  model, x = transformer_models.gpt2_causal_lm()
  with caplog.at_level(logging.WARNING):
    groups = _groups(model)
  assert "heads are kept whole" in caplog.text
  assert not any(n.endswith(":heads") for n in groups)
  keep = {n: np.arange(0, g.size, 2) for n, g in groups.items()}
  pruned = keras_epi.prune_model(model, keep)
  prompt = {"token_ids": x["token_ids"][:, :8],
            "padding_mask": np.concatenate(
                [np.ones((2, 4), "int32"), np.zeros((2, 4), "int32")], 1)}
  out = pruned.generate(prompt, max_length=8, stop_token_ids=None)
  assert out["token_ids"].shape == (2, 8)
  np.testing.assert_array_equal(out["token_ids"][:, :4],
                                prompt["token_ids"][:, :4])
  # Its backbone alone prunes heads too.
  assert any(n.endswith(":heads") for n in _groups(model.backbone))


def test_a_latency_table_of_a_transformer_is_refused_naming_the_layer():
  model, _ = transformer_models.encoder_block()
  with pytest.raises(ValueError, match=r"'mha' \(MultiHeadAttention\) is an "
                     r"attention layer.*budget='macs'"):
    keras_epi.LatencyTable.measure(model, batch_size=2)
