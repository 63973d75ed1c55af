"""Tests of keras_epi.plan: a plan resolved into per-layer masks and cuts,
the one width-rounding rule, and the plan's validation."""

import keras
import numpy as np
import pytest

from keras_epi import graph
from keras_epi import plan as plan_lib

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def _model():
  x = keras.Input((4, 4, 3))
  a = L.Conv2D(6, 1, name="a")(x)
  b = L.Conv2D(4, 1, name="b")(L.BatchNormalization(name="bn")(a))
  shared = L.Conv2D(4, 1, name="shared")
  y = shared(shared(b))
  return keras.Model(x, L.Dense(2, name="fc")(L.Flatten()(y)))


def test_masks_and_cuts_follow_np_delete():
  model = _model()
  analysis = graph.analyze(model)
  plan = plan_lib.ResolvedPlan(analysis, {"a": [0, 2, 5]})
  removed = [1, 3, 4]
  masks = plan.masks(analysis.calls["b"])
  np.testing.assert_array_equal(masks["in"], np.isin(np.arange(6), [0, 2, 5]))
  assert masks["out"].all()
  kernel = keras.ops.convert_to_numpy(model.get_layer("b").kernel)
  np.testing.assert_array_equal(plan.cut("b", "kernel", kernel),
                                np.delete(kernel, removed, axis=-2))
  gamma = keras.ops.convert_to_numpy(model.get_layer("bn").gamma)
  np.testing.assert_array_equal(plan.cut("bn", "gamma", gamma),
                                np.delete(gamma, removed))
  # MACs of the plan: a 16x3x3 of 6, b 16x3x4 of 6 inputs, shared twice
  # 16x4x4, fc 64x2.
  assert plan.macs() == 16 * 3 * 3 + 16 * 3 * 4 + 2 * 16 * 16 + 64 * 2


def test_counted_calls_key_every_call_of_a_shared_layer():
  keys = [k for k, _ in plan_lib.counted_calls(graph.analyze(_model()))]
  assert keys == ["a", "b", "shared", "shared#1", "fc"]


@pytest.mark.parametrize("width, round_to, size, expected", [
    (5, 1, 8, 5), (5.4, 1, 8, 5), (12, 8, 16, 16), (11.9, 8, 16, 8),
    (4, 8, 16, 8),  # at least round_to
    (3, 8, 4, 4),  # but at most the group
    (20, 8, 20, 20),  # the full width is kept as it is
    (19, 8, 20, 16),
])
def test_round_width(width, round_to, size, expected):
  assert plan_lib.round_width(width, round_to, size) == expected


def test_round_width_keeps_min_channels():
  assert plan_lib.round_width(1, 1, 8, min_channels=3) == 3


@pytest.mark.parametrize("keep, message", [
    ([1, 2], "`keep` must map group names"),
    ({"nope": [0]}, "`keep` names group 'nope'"),
    ({"a": [[0, 1]]}, r"`keep\['a'\]` must be a 1-D sequence"),
    ({"a": []}, r"`keep\['a'\]` is empty"),
    ({"a": [0, 6]}, r"indices outside \[0, 6\): \[6\]"),
    ({"a": [1, 1]}, "repeated indices"),
])
def test_bad_plans_are_named(keep, message):
  with pytest.raises(ValueError, match=message):
    plan_lib.ResolvedPlan(graph.analyze(_model()), keep)
