"""Tests of keras_epi.timing: alternated timing with known ratios.

The callables advance a fake clock instead of sleeping, so every time and
ratio has an exact oracle (1-4 ms sleeps overshot by up to 0.6 ms under the
test suite's own load, which made the sleeping version flaky).
"""

import json
import time

import numpy as np
import pytest

from keras_epi import timing


class _Clock:
  """`timing.time` for a test: a clock that only `sleep` advances."""

  def __init__(self):
    self.now = 0.0

  def perf_counter(self):
    return self.now

  def sleep(self, seconds):
    self.now += seconds

  def process_time(self):
    return 0.0


@pytest.fixture(name="clock")
def _clock(monkeypatch):
  clock = _Clock()
  monkeypatch.setattr(timing, "time", clock)
  return clock


class _Log:
  """Callables that take a known time on `clock` and log which ran."""

  def __init__(self, clock):
    self.calls = []
    self.clock = clock

  def sleeper(self, name, seconds):
    def call():
      self.calls.append(name)
      self.clock.sleep(seconds)
    return call


def test_known_sleep_ratio_and_rotating_order(clock):
  log = _Log(clock)
  result = timing.time_alternately(
      {"short": log.sleeper("short", 0.002),
       "long": log.sleeper("long", 0.004)},
      rounds=6, warmup=1, num_calls=10)
  # Oracle: 4 ms per call is twice 2 ms, in every round.
  assert result["ratio"]["long"] == pytest.approx(2.0, rel=1e-9)
  assert result["ratio"]["short"] == 1.0
  low, high = result["ratio_range"]["long"]
  q25, q75 = result["ratio_quartiles"]["long"]
  assert low == pytest.approx(2.0, rel=1e-9) and high == pytest.approx(
      2.0, rel=1e-9)
  assert low <= q25 <= result["ratio"]["long"] <= q75 <= high
  for name, want in (("short", 0.002), ("long", 0.004)):
    assert len(result["seconds"][name]) == 6
    assert result["median_seconds"][name] == pytest.approx(want, rel=1e-9)
    assert result["seconds"][name] == pytest.approx([want] * 6, rel=1e-9)
  # The order alternates round by round, and the log shows it: one warm-up
  # call each, then per round 10 calls of each in that round's order.
  assert result["order"] == [["short", "long"], ["long", "short"]] * 3
  want_log = ["short", "long"]
  for order in result["order"]:
    for name in order:
      want_log += [name] * 10
  assert log.calls == want_log
  assert len(result["foreign_load"]) == 6
  assert all(l is None or l >= 0.0 for l in result["foreign_load"])
  json.dumps(result)  # plain data


def test_rotation_of_three_puts_each_first_once():
  names = ["a", "b", "c"]
  orders = [timing.rotation(names, r) for r in range(3)]
  assert orders == [["a", "b", "c"], ["b", "c", "a"], ["c", "a", "b"]]
  assert sorted(o[0] for o in orders) == names


def test_paired_ratios_follow_each_round(clock):
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
      clock.sleep(0.001 * factor * slowdown[round_index])
    return call

  result = timing.time_alternately(
      {"base": make(1), "slow": make(3)}, rounds=3, warmup=0, num_calls=2,
      monitor=FakeMonitor())
  assert result["ratio"]["slow"] == pytest.approx(3.0, rel=1e-9)
  low, high = result["ratio_range"]["slow"]
  assert low == pytest.approx(3.0, rel=1e-9) and high == pytest.approx(
      3.0, rel=1e-9)
  # The machine's speed did change: 1 ms, 4 ms and 2 ms per base call.
  assert result["seconds"]["base"] == pytest.approx([0.001, 0.004, 0.002],
                                                    rel=1e-9)
  assert result["foreign_load"] == [0.5, 0.5, 0.5]


def test_calibrate_and_synchronize(clock):
  assert timing.calibrate(lambda: clock.sleep(0.002), seconds=0.02) == 10
  assert timing.calibrate(lambda: clock.sleep(0.05), seconds=0.02) == 1
  out = timing.synchronize({"a": np.ones(2), "b": [np.zeros(1)]})
  np.testing.assert_array_equal(out["a"], [1.0, 1.0])
  assert timing.synchronize(None) is None


@pytest.mark.parametrize("kwargs, message", [
    ({"calls": {}}, "`calls` must be a non-empty dict"),
    ({"calls": {"a": 3}}, "`calls` must be a non-empty dict"),
    ({"calls": {"a": time.time}, "rounds": 0}, "`rounds` must be"),
    ({"calls": {"a": time.time}, "warmup": -1}, "`warmup` must be"),
    ({"calls": {"a": time.time}, "num_calls": 0}, "`num_calls` must be"),
])
def test_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    timing.time_alternately(**kwargs)


def test_median_statistic_and_settle_calls(clock):
  """statistic='median' times each call alone: one slow call in five does
  not move it; `settle` calls run before each measurement, untimed."""
  log = _Log(clock)
  durations = iter([0.001, 0.001, 0.009, 0.001, 0.001] * 2 + [0.0] * 99)
  calls = []

  def call():
    calls.append(1)
    clock.sleep(next(durations))

  result = timing.time_alternately({"a": call}, rounds=2, warmup=0,
                                   num_calls=5, statistic="median",
                                   settle=0)
  assert result["seconds"]["a"] == pytest.approx([0.001, 0.001], rel=1e-9)
  result = timing.time_alternately(
      {"x": log.sleeper("x", 0.003)}, rounds=2, warmup=1, num_calls=2,
      settle=1)
  # One warm-up call, then per round 1 settle call and 2 timed calls.
  assert log.calls == ["x"] * 7
  assert result["median_seconds"]["x"] == pytest.approx(0.003, rel=1e-9)
  with pytest.raises(ValueError, match="`statistic` must be one of"):
    timing.time_alternately({"x": time.time}, statistic="max")


def test_machine_info_names_the_cpu_and_versions():
  info = timing.machine_info()
  assert info["usable_cpus"] >= 1 and info["cpu_count"] >= 1
  assert info["keras"] and info["backend"] and info["python"]
  json.dumps(info)
  assert timing.same_machine(info, dict(info, date="another day"))
  assert not timing.same_machine(info, dict(info, cpu_count=999))
