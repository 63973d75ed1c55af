"""keras_epi.pruning: which groups a run cuts, its plans, and the cut."""

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import graph
from keras_epi import pruning
from tests import oracle
from tests.helpers import sigmoid_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def groups_of(model, **kwargs):
  settings = dict(keep_stem=True, keep_residual=False, prune_frozen=False,
                  min_channels=1)
  settings.update(kwargs)
  analysis = graph.analyze(model)
  return analysis, pruning.prunable_groups(model, analysis, **settings)


def make_pruning(model, budget="neurons", **kwargs):
  analysis, (_, groups) = groups_of(model)
  settings = dict(budget=budget, latency_table=None, min_channels=1,
                  round_to=1, ignore=())
  settings.update(kwargs)
  return pruning.Pruning(analysis, groups, **settings)


def test_prunable_groups_leave_the_stem_and_frozen_layers_whole():
  model = sigmoid_model(batchnorm=True)
  _, (frozen, groups) = groups_of(model)
  assert frozen == () and [g.name for g in groups] == ["c1", "c2"]
  _, (_, groups) = groups_of(model, keep_stem=False)
  assert [g.name for g in groups] == ["stem", "c1", "c2"]
  model.get_layer("c1").trainable = False
  _, (frozen, groups) = groups_of(model)
  assert frozen == ("c1",) and [g.name for g in groups] == ["c2"]
  _, (frozen, groups) = groups_of(model, prune_frozen=True)
  assert frozen == () and [g.name for g in groups] == ["c1", "c2"]


def test_prunable_groups_errors_and_warnings():
  model = sigmoid_model(batchnorm=False)
  for name in ("c1", "c2"):
    model.get_layer(name).trainable = False
  with pytest.raises(ValueError, match="has no prunable channel groups"):
    groups_of(model)
  with pytest.warns(UserWarning, match="min_channels=12 is at least"):
    groups_of(sigmoid_model(batchnorm=False), min_channels=12)


def test_a_later_plan_only_adds_to_what_an_earlier_one_removed():
  model = sigmoid_model(batchnorm=True)
  cut = make_pruning(model)
  rng = np.random.default_rng(0)
  first = cut.plan({"c1": rng.random(12), "c2": rng.random(12)}, 0.25)
  # New scores that rank the removed channels best: still removed.
  scores = {name: np.where(np.isin(np.arange(12), first[name]), 0.0, 9.0)
            for name in first}
  second = cut.plan(scores, 0.5, kept=first)
  for name in first:
    assert set(second[name]) <= set(first[name])
  assert sum(map(len, second.values())) == 12  # half of 24 channels
  assert sum(map(len, first.values())) == 18


def test_masked_model_equals_its_cut_and_logs_are_exact():
  model = sigmoid_model(batchnorm=True)
  cut = make_pruning(model)
  keep = {"c1": np.array([0, 3, 4, 9]), "c2": np.arange(2, 10)}
  cut.start_masking(model, keep)
  pruned, surgeon = cut.cut(model, keep)
  assert surgeon is not None
  x = np.random.default_rng(1).normal(size=(4, 8, 8, 1)).astype("float32")
  error = oracle.relative_error(pruned.predict(x, verbose=0),
                                model.predict(x, verbose=0))
  assert error < 1e-5
  logs = cut.prune_logs(model, pruned, keep)
  assert logs["kept_fraction"] == pytest.approx(12 / 24)
  assert logs["macs_fraction"] == pytest.approx(
      keras_epi.count_macs(pruned) / keras_epi.count_macs(model))
  assert cut.macs_fraction(keep) == pytest.approx(logs["macs_fraction"])


def test_cut_after_fit_warns_where_removed_channels_came_back():
  model = sigmoid_model(batchnorm=False)
  cut = make_pruning(model)
  keep = {"c1": np.arange(6), "c2": np.arange(12)}
  cut.start_masking(model, keep)
  cut.cut_after_fit(model, keep)  # still zero: no warning
  kernel = model.get_layer("c1").kernel
  value = keras.ops.convert_to_numpy(kernel)
  value[..., 7] = 1.0  # a removed filter set again (a restored checkpoint)
  kernel.assign(value)
  with pytest.warns(UserWarning, match="removed channels .* are not zero"):
    cut.cut_after_fit(model, keep)
  cut.apply_masks()  # the masks zero it again
  assert np.all(keras.ops.convert_to_numpy(kernel)[..., 6:] == 0)


def test_latency_target_is_checked_before_training():
  # Every layer at U seconds per input x output channel, plus 1000 U fixed:
  # c1 and c2 at one channel each leave 8 + 8 + 1 + 2 = 19 U of the 8 + 96 +
  # 144 + 24 = 272 U of layers, so at most 1 - 1019 / 1272 = 0.198899 of the
  # time can go (the error rounds it down: 0.1988).
  u = 1e-6
  def entry(ins, outs):
    return {"in": ins, "out": outs,
            "seconds": [[u * a * b for b in outs] for a in ins]}
  table = keras_epi.LatencyTable(
      {"stem": entry([1], [1, 8]), "c1": entry([1, 8], [1, 12]),
       "c2": entry([1, 12], [1, 12]), "fc": entry([1, 12], [2])},
      fixed=1000 * u)
  cut = make_pruning(sigmoid_model(batchnorm=False), budget="latency",
                     latency_table=table)
  cut.check_latency_target(0.19)
  with pytest.raises(ValueError, match=r"prune_ratio=0.2, budget='latency'"
                     r"\), checked before training: .*at most ratio=0\.1988 "):
    cut.check_latency_target(0.2)
