"""Tests of keras_epi.importance against NumPy references."""

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import importance
from tests import oracle
from tests.helpers import loss_gradients

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def _bn_model(seed=0):
  keras.utils.set_random_seed(seed)
  x = keras.Input((6, 6, 2))
  a = L.Conv2D(4, 3, padding="same", use_bias=False, name="a")(x)
  a = L.BatchNormalization(name="bn_a")(a)
  a = L.ReLU()(a)
  b = L.Conv2D(4, 1, use_bias=False, name="b")(a)
  b = L.BatchNormalization(name="bn_b")(b)
  h = L.ReLU()(L.Add(name="add")([a, b]))  # couples a and b
  c = L.Conv2D(3, 3, name="c")(h)  # no BN: filter fallback
  y = L.Dense(2, name="fc")(L.GlobalAveragePooling2D()(L.ReLU()(c)))
  model = keras.Model(x, y)
  oracle.randomize_statistics(model, seed)
  return model


def _data(n=16, seed=0):
  rng = np.random.default_rng(seed)
  return (rng.normal(size=(n, 6, 6, 2)).astype("float32"),
          rng.integers(0, 2, size=n).astype("int32"))


def _loss():
  return keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def _reference_taylor(model, groups, x, y):
  """NumPy reference from one backward pass over the same batch."""
  variables = model.trainable_variables
  grads = {v.path: g for v, g in zip(
      variables, loss_gradients(model, _loss(), x, y))}
  value = {v.path: keras.ops.convert_to_numpy(v) for v in variables}
  scores = {}
  for g in groups:
    s = np.zeros(g.size)
    bn = [p for p, _ in g.members if p.startswith("bn_")]
    for path, positions in g.members:
      if bn and path in bn:
        per = (value[f"{path}/gamma"] * grads[f"{path}/gamma"] +
               value[f"{path}/beta"] * grads[f"{path}/beta"])
      elif not bn and path in ("a", "b", "c"):
        w, gw = value[f"{path}/kernel"], grads[f"{path}/kernel"]
        per = (w * gw).sum(axis=(0, 1, 2))
        if f"{path}/bias" in value:
          per = per + value[f"{path}/bias"] * grads[f"{path}/bias"]
      else:
        continue
      s += per[positions]
    scores[g.name] = s ** 2
  return scores


def test_taylor_from_fit_equals_numpy_reference():
  model = _bn_model()
  x, y = _data()
  groups = keras_epi.channel_groups(model)
  expected = _reference_taylor(model, groups, x, y)
  # lr=0: the one step does not move the weights the reference used.
  model.compile(keras.optimizers.SGD(0.0), _loss())
  cb = keras_epi.EPICallback(prune_ratio=0.5, keep_stem=False)

  model.fit(x, y, batch_size=len(x), epochs=1, shuffle=False, callbacks=[cb],
            verbose=0)

  assert sorted(cb.importance) == sorted(expected) == ["a", "c"]
  for name, value in expected.items():
    np.testing.assert_allclose(cb.importance[name], value, rtol=1e-4,
                               atol=1e-12)
  assert expected["a"].max() > 0 and expected["c"].max() > 0


def test_taylor_abs_reduction_and_averaging_over_batches():
  model = _bn_model()
  groups = keras_epi.channel_groups(model)
  scorer = importance.TaylorScorer(model, groups, reduction="abs")
  x, y = _data(32)
  halves = [(x[:16], y[:16]), (x[16:], y[16:])]
  expected = {g.name: 0.0 for g in groups}
  for xb, yb in halves:
    ref = _reference_taylor(model, groups, xb, yb)
    for k, v in ref.items():
      expected[k] = expected[k] + np.sqrt(v) / 2
    variables = model.trainable_variables
    scorer.update(loss_gradients(model, _loss(), xb, yb), variables)
  result = scorer.result()
  for name, value in expected.items():
    np.testing.assert_allclose(result[name], value, rtol=1e-4)
  scorer.reset()
  assert scorer.result() is None


def test_non_finite_batches_are_skipped_and_counted():
  model = _bn_model()
  groups = keras_epi.channel_groups(model)
  scorer = importance.TaylorScorer(model, groups)
  variables = model.trainable_variables
  good = [np.ones(v.shape, "float32") for v in variables]
  scorer.update(good, variables)
  before = scorer.result()
  scorer.update([np.full(v.shape, np.nan, "float32") for v in variables],
                variables)
  scorer.update([np.full(v.shape, np.inf, "float32") for v in variables],
                variables)
  after = scorer.result()
  assert scorer.skipped == 2
  for name in before:
    np.testing.assert_array_equal(before[name], after[name])
    assert np.isfinite(after[name]).all()


def test_magnitude_importance_is_normalised_filter_norm_summed_over_group():
  model = _bn_model()
  groups = {g.name: g for g in keras_epi.channel_groups(model)}
  scores = keras_epi.magnitude_importance(model, list(groups.values()))

  def norms(name):
    k = keras.ops.convert_to_numpy(model.get_layer(name).kernel)
    k = k.reshape(-1, k.shape[-1])
    return np.linalg.norm(k, axis=0) / np.sqrt(k.shape[0])

  np.testing.assert_allclose(scores["a"], norms("a") + norms("b"))
  np.testing.assert_allclose(scores["c"], norms("c"))


def test_bad_reduction_is_rejected():
  model = _bn_model()
  with pytest.raises(ValueError, match="`taylor_reduction` must be one of"):
    importance.TaylorScorer(model, keras_epi.channel_groups(model), "mean")
