"""Tests of benchmarks/harness.py: alternated timing with known ratios."""

import json
import time

import numpy as np
import pytest

from benchmarks import common
from benchmarks import harness


class _Log:
  """Callables that sleep a known time and log which ran."""

  def __init__(self):
    self.calls = []

  def sleeper(self, name, seconds):
    def call():
      self.calls.append(name)
      time.sleep(seconds)
    return call


def test_known_sleep_ratio_and_rotating_order():
  log = _Log()
  timing = harness.time_alternately(
      {"short": log.sleeper("short", 0.002),
       "long": log.sleeper("long", 0.004)},
      rounds=6, warmup=1, num_calls=10)
  # Oracle: sleeping 4 ms takes twice as long as sleeping 2 ms (the sleeps'
  # overshoot, tens of microseconds, is within the tolerance).
  assert timing["ratio"]["long"] == pytest.approx(2.0, rel=0.25)
  assert timing["ratio"]["short"] == 1.0
  low, high = timing["ratio_range"]["long"]
  q25, q75 = timing["ratio_quartiles"]["long"]
  assert low <= q25 <= timing["ratio"]["long"] <= q75 <= high
  for name, want in (("short", 0.002), ("long", 0.004)):
    assert len(timing["seconds"][name]) == 6
    assert timing["median_seconds"][name] == pytest.approx(want, rel=0.25)
    assert min(timing["seconds"][name]) >= want
  # The order alternates round by round, and the log shows it: one warm-up
  # call each, then per round 10 calls of each in that round's order.
  assert timing["order"] == [["short", "long"], ["long", "short"]] * 3
  want_log = ["short", "long"]
  for order in timing["order"]:
    for name in order:
      want_log += [name] * 10
  assert log.calls == want_log
  assert len(timing["foreign_load"]) == 6
  assert all(l is None or l >= 0.0 for l in timing["foreign_load"])
  json.dumps(timing)  # plain data


def test_rotation_of_three_puts_each_first_once():
  names = ["a", "b", "c"]
  orders = [harness.rotation(names, r) for r in range(3)]
  assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
  assert sorted(o[0] for o in orders) == names


def test_paired_ratios_follow_each_round():
  """A callable always 3x the first in its round, while the machine's speed
  changes 4x between rounds: the paired ratio stays 3."""

  class FakeMonitor:

    def snapshot(self):
      return None

    def foreign_load(self, snapshot):
      del snapshot
      return 0.5

  slowdown = [1.0, 4.0, 2.0]  # per round
  count = [0]

  def make(factor):
    def call():
      round_index = count[0] // 4  # 2 callables x 2 calls per round
      count[0] += 1
      time.sleep(0.001 * factor * slowdown[round_index])
    return call

  timing = harness.time_alternately(
      {"base": make(1), "slow": make(3)}, rounds=3, warmup=0, num_calls=2,
      monitor=FakeMonitor())
  assert timing["ratio"]["slow"] == pytest.approx(3.0, rel=0.25)
  low, high = timing["ratio_range"]["slow"]
  assert 3.0 * 0.75 < low <= high < 3.0 * 1.25
  base = timing["seconds"]["base"]
  assert max(base) / min(base) > 3.0  # the machine's speed did change
  assert timing["foreign_load"] == [0.5, 0.5, 0.5]


def test_calibrate_and_synchronize():
  n = harness.calibrate(lambda: time.sleep(0.002), seconds=0.02)
  assert 5 <= n <= 10
  out = harness.synchronize({"a": np.ones(2), "b": [np.zeros(1)]})
  np.testing.assert_array_equal(out["a"], [1.0, 1.0])
  assert harness.synchronize(None) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"calls": {}}, "`calls` must be a non-empty dict"),
    ({"calls": {"a": 3}}, "`calls` must be a non-empty dict"),
    ({"calls": {"a": time.time}, "rounds": 0}, "`rounds` must be"),
    ({"calls": {"a": time.time}, "warmup": -1}, "`warmup` must be"),
    ({"calls": {"a": time.time}, "num_calls": 0}, "`num_calls` must be"),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    harness.time_alternately(**kwargs)


def test_record_reuses_the_machine_facts():
  rec = harness.record(batch_size=8)
  assert rec["settings"] == {"batch_size": 8}
  assert rec["machine"]["usable_cpus"] >= 1
  assert set(common.machine_info()) == set(rec["machine"])
