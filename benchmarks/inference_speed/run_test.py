"""Tests of the plan search (run.py) and the breakdown (breakdown.py)."""

import dataclasses

import keras
import pytest

from benchmarks.inference_speed import breakdown
from benchmarks.inference_speed import run
import keras_epi

L = keras.layers


def _model():
  inputs = keras.Input((16, 16, 3))
  x = L.ReLU()(L.BatchNormalization()(L.Conv2D(13, 3, padding="same")(inputs)))
  x = L.Add()([x, L.Conv2D(13, 1)(L.Conv2D(21, 3, padding="same")(x))])
  x = L.Conv2D(30, 1)(L.DepthwiseConv2D(3, padding="same")(x))
  return keras.Model(inputs, L.Dense(5)(L.GlobalAveragePooling2D()(x)))


@pytest.mark.parametrize("target", [0.5, 0.3])
def test_search_finds_the_nearest_ratio_at_its_smallest_fraction(target):
  keras.utils.set_random_seed(0)
  model = _model()
  scores = keras_epi.magnitude_importance(model,
                                          keras_epi.channel_groups(model))
  config = dataclasses.replace(run.Config(), target_macs_ratio=target)
  fraction, keep, macs = run.search_plan(config, model, scores, 2)
  dense = keras_epi.count_macs(model)
  ratios = [keras_epi.count_macs(model, keras_epi.uniform_plan(
      model, k / 1000, scores=scores, round_to=2)) / dense
            for k in range(1, 1001)]  # the oracle: every fraction
  best = min(range(1000), key=lambda i: abs(ratios[i] - target))
  assert fraction == (best + 1) / 1000 and macs / dense == ratios[best]
  want = keras_epi.uniform_plan(model, fraction, scores=scores, round_to=2)
  assert {g: list(k) for g, k in keep.items()} == {
      g: list(k) for g, k in want.items()}
  wide = dataclasses.replace(config, min_width=20)
  _, keep, _ = run.search_plan(wide, model, scores, 2)
  sizes = {g.name: g.size for g in keras_epi.channel_groups(model)}
  assert all(sizes[g] > 20 and len(k) >= 20 for g, k in keep.items())


def test_breakdown_totals_by_kind_and_alignment():
  def layer(name, kind, dense, pruned):  # (c_in, c_out, MACs, seconds)
    return {"name": name, "kind": kind, "variants": [
        dict(zip(("c_in", "c_out", "macs", "seconds"), v))
        for v in (dense, pruned)]}
  rows = [layer("a", "conv3x3", (8, 16, 400, 0.004), (8, 8, 200, 0.001)),
          layer("b", "conv1x1", (16, 16, 100, 0.002), (8, 6, 30, 0.002))]
  s = breakdown.summarize(rows, 1, (0.010, 0.005), worst=1)
  assert s["mac_layers"]["dense_ms"] == pytest.approx(6.0)
  assert s["mac_layers"]["efficiency"] == pytest.approx(2.0 / (500 / 230))
  assert s["other_ops"]["dense_ms"] == pytest.approx(4.0)
  assert s["other_ops"]["pruned_ms"] == pytest.approx(2.0)
  assert s["by_kind"]["conv3x3"]["speedup"] == pytest.approx(4.0)
  assert s["by_alignment"]["multiple_of_8"]["layers"] == 1  # a: 8
  assert s["by_alignment"]["not_multiple_of_8"]["layers"] == 1  # b: 6
  assert [w["name"] for w in s["worst_layers"]] == ["b"]
