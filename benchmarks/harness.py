"""One timing harness for the benchmarks: callables timed alternately.

The host's speed drifts by tens of percent within minutes (see README.md), so
two things timed minutes apart cannot be compared. `time_alternately` times
several callables in one process, round by round, each round measuring every
callable once in an order that rotates from round to round; a callable's
speed relative to the first one is the median over rounds of the *paired*
ratio (its time / the first one's time in the same round), and the spread of
those ratios is reported beside it.

```python
from benchmarks import harness
timing = harness.time_alternately(
    {"dense": lambda: dense_fn(x), "pruned": lambda: pruned_fn(x)})
timing["ratio"]["pruned"]           # median paired time ratio pruned/dense
timing["ratio_quartiles"]["pruned"]
```

Machine facts, foreign CPU load and writing results come from
`benchmarks/common.py` (`machine_info`, `CpuMonitor`, `write_results`).
"""

import time

import keras
import numpy as np

from benchmarks import common


def synchronize(result):
  """Waits for `result` (any nest of tensors or arrays, or None) to be
  computed, by converting it to NumPy; returns the NumPy nest."""
  if result is None:
    return None
  return keras.tree.map_structure(keras.ops.convert_to_numpy, result)


def measure(call, num_calls):
  """Seconds per call of `num_calls` calls of `call()`, each synchronised."""
  start = time.perf_counter()
  for _ in range(num_calls):
    synchronize(call())
  return (time.perf_counter() - start) / num_calls


def calibrate(call, seconds, probes=3):
  """Calls per measurement so that one measurement lasts about `seconds`
  (from the median of `probes` single calls); at least 1."""
  single = float(np.median([measure(call, 1) for _ in range(probes)]))
  return max(1, int(round(seconds / max(single, 1e-9))))


def rotation(names, round_index):
  """The order of round `round_index`: `names` rotated left by the index, so
  every callable goes first (and, for two, second) equally often."""
  k = round_index % len(names)
  return list(names[k:]) + list(names[:k])


def time_alternately(calls, *, rounds=7, warmup=2, num_calls=None,
                     seconds_per_measurement=0.2, monitor=None):
  """Times callables alternately in this process.

  Every callable is first called `warmup` times (tracing, caches). Then
  `rounds` rounds each measure every callable once, in the order
  `rotation(names, round)`; a measurement is `num_calls` calls, each
  synchronised (`synchronize`: the result converted to NumPy), divided by
  `num_calls`. When `num_calls` is None it is set once, from the first
  callable, so that one measurement lasts about `seconds_per_measurement`.

  Args:
    calls: ``{name: callable}`` (insertion-ordered); the first is the
      reference of the ratios. Each is called with no argument.
    rounds: Measurement rounds (>= 1).
    warmup: Untimed calls of each callable before the rounds.
    num_calls: Calls per measurement, or None to calibrate.
    seconds_per_measurement: The calibration's target.
    monitor: A `common.CpuMonitor` (one is made when None): the share of the
      CPUs used by other processes during each measurement is recorded.

  Returns:
    Plain data: ``names``, ``rounds``, ``warmup``, ``num_calls``, ``order``
    (the names in the order measured, per round), ``seconds`` (``{name: [per
    round seconds per call]}``), ``median_seconds``, ``ratio`` (``{name:
    median over rounds of seconds[name] / seconds[first]}``, 1.0 for the
    first), ``ratio_range`` (``[min, max]`` of those paired ratios),
    ``ratio_quartiles`` (``[25th, 75th]`` percentiles) and ``foreign_load``
    (per round, the largest foreign load of its measurements; None where
    /proc/stat is unreadable).

  Raises:
    ValueError: for no callables, a non-callable, or a bad count.
  """
  names = list(calls)
  if not names or not all(callable(calls[n]) for n in names):
    raise ValueError(f"`calls` must be a non-empty dict of callables, "
                     f"received {calls!r}.")
  checks = [("rounds", rounds, 1), ("warmup", warmup, 0)]
  if num_calls is not None:
    checks.append(("num_calls", num_calls, 1))
  for arg, value, least in checks:
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
      raise ValueError(f"`{arg}` must be an integer >= {least}, received "
                       f"{value!r}.")
  monitor = monitor or common.CpuMonitor()
  for name in names:
    for _ in range(warmup):
      synchronize(calls[name]())
  if num_calls is None:
    num_calls = calibrate(calls[names[0]], seconds_per_measurement)
  seconds = {name: [] for name in names}
  order, loads = [], []
  for round_index in range(rounds):
    order.append(rotation(names, round_index))
    round_loads = []
    for name in order[-1]:
      snapshot = monitor.snapshot()
      seconds[name].append(measure(calls[name], num_calls))
      round_loads.append(monitor.foreign_load(snapshot))
    loads.append(None if None in round_loads else max(round_loads))
  first = np.asarray(seconds[names[0]])
  paired = {name: np.asarray(seconds[name]) / first for name in names}
  return {
      "names": names, "rounds": rounds, "warmup": warmup,
      "num_calls": num_calls, "order": order, "seconds": seconds,
      "median_seconds": {n: float(np.median(s)) for n, s in seconds.items()},
      "ratio": {n: float(np.median(r)) for n, r in paired.items()},
      "ratio_range": {n: [float(r.min()), float(r.max())]
                      for n, r in paired.items()},
      "ratio_quartiles": {n: [float(q) for q in np.percentile(r, [25, 75])]
                          for n, r in paired.items()},
      "foreign_load": loads,
  }


def record(**settings):
  """The machine (`common.machine_info`) and the date beside `settings`,
  for the JSON written with `common.write_results`."""
  return {"date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
          "machine": common.machine_info(), "settings": settings}
