"""Timing callables against each other on a noisy machine.

A shared host's speed drifts by tens of percent within minutes, so two
things timed minutes apart cannot be compared. `time_alternately` times
several callables in one process, round by round: each round measures every
callable once, in an order that rotates from round to round, and a
callable's speed relative to the first is the median over rounds of the
*paired* ratio (its time / the first one's, same round), with the spread of
those ratios beside it. `keras_epi.LatencyTable` measures with it, and so do
the benchmarks.

```python
from keras_epi import timing
result = timing.time_alternately(
    {"dense": lambda: dense(x), "pruned": lambda: pruned(x)})
result["ratio"]["pruned"]            # median paired time ratio pruned/dense
result["ratio_quartiles"]["pruned"]
timing.machine_info()                # what to state beside the numbers
```
"""

import datetime
import importlib.metadata
import os
import platform
import sys
import time

import numpy as np

from keras_epi import _validation as validation

STATISTICS = ("mean", "median")


def synchronize(result):
  """Waits for `result` (any nest of tensors or arrays, or None) to be
  computed, by converting it to NumPy; returns the NumPy nest."""
  if result is None:
    return None
  import keras  # pylint: disable=g-import-not-at-top
  return keras.tree.map_structure(keras.ops.convert_to_numpy, result)


def measure(call, num_calls, statistic="mean", settle=0):
  """Seconds per call of `call()` over `num_calls` calls, each
  synchronised: their mean (one clock reading around all of them) or the
  median of the calls timed one by one; after `settle` untimed calls."""
  for _ in range(settle):
    synchronize(call())
  if statistic == "mean":
    start = time.perf_counter()
    for _ in range(num_calls):
      synchronize(call())
    return (time.perf_counter() - start) / num_calls
  times = []
  for _ in range(num_calls):
    start = time.perf_counter()
    synchronize(call())
    times.append(time.perf_counter() - start)
  return float(np.median(times))


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
                     seconds_per_measurement=0.2, statistic="mean", settle=0,
                     monitor=None):
  """Times callables alternately in this process.

  Every callable is first called `warmup` times (tracing, caches). Then
  `rounds` rounds each measure every callable once, in the order
  `rotation(names, round)`. A measurement is `settle` untimed calls (the
  callable's data comes back into the caches after another one ran), then
  `num_calls` timed calls, each synchronised (`synchronize`), summarised as
  their `statistic`: "mean" (one clock reading around the calls) or
  "median" (of the calls timed one by one). When `num_calls` is None it is
  set once, from the first callable, so that one measurement lasts about
  `seconds_per_measurement`.

  Args:
    calls: ``{name: callable}`` (insertion-ordered); the first is the
      reference of the ratios. Each is called with no argument.
    rounds: Measurement rounds (>= 1).
    warmup: Untimed calls of each callable before the rounds (>= 0).
    num_calls: Timed calls per measurement (>= 1), or None to calibrate.
    seconds_per_measurement: The calibration's target, > 0.
    statistic: "mean" or "median", as above.
    settle: Untimed calls before each measurement (>= 0).
    monitor: A `CpuMonitor` (one is made when None): the share of the CPUs
      used by other processes during each measurement is recorded.

  Returns:
    Plain data: ``names``, ``rounds``, ``warmup``, ``num_calls``,
    ``statistic``, ``settle``, ``order`` (the names in the order measured,
    per round), ``seconds`` (``{name: [per round seconds per call]}``),
    ``median_seconds``, ``ratio`` (``{name: median over rounds of
    seconds[name] / seconds[first]}``, 1.0 for the first), ``ratio_range``
    (``[min, max]`` of those paired ratios), ``ratio_quartiles`` (``[25th,
    75th]`` percentiles) and ``foreign_load`` (per round, the largest
    foreign load of its measurements; None where /proc/stat is unreadable).

  Raises:
    ValueError: for no callables, a non-callable, or a bad count (the
      message names the argument).
  """
  names = list(calls) if isinstance(calls, dict) else []
  if not names or not all(callable(calls[n]) for n in names):
    raise ValueError(f"`calls` must be a non-empty dict of callables, "
                     f"received calls={calls!r}.")
  validation.integer("rounds", rounds, 1)
  validation.integer("warmup", warmup, 0)
  validation.integer("settle", settle, 0)
  validation.choice("statistic", statistic, STATISTICS)
  if num_calls is None:
    validation.number("seconds_per_measurement", seconds_per_measurement,
                      "(0, inf)")
  else:
    validation.integer("num_calls", num_calls, 1)
  monitor = monitor or CpuMonitor()
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
      seconds[name].append(measure(calls[name], num_calls, statistic,
                                   settle))
      round_loads.append(monitor.foreign_load(snapshot))
    loads.append(None if None in round_loads else max(round_loads))
  first = np.asarray(seconds[names[0]])
  paired = {name: np.asarray(seconds[name]) / first for name in names}
  return {
      "names": names, "rounds": rounds, "warmup": warmup,
      "num_calls": num_calls, "statistic": statistic, "settle": settle,
      "order": order, "seconds": seconds,
      "median_seconds": {n: float(np.median(s)) for n, s in seconds.items()},
      "ratio": {n: float(np.median(r)) for n, r in paired.items()},
      "ratio_range": {n: [float(r.min()), float(r.max())]
                      for n, r in paired.items()},
      "ratio_quartiles": {n: [float(q) for q in np.percentile(r, [25, 75])]
                          for n, r in paired.items()},
      "foreign_load": loads,
  }


class CpuMonitor:
  """CPU time used by others than this process, from /proc/stat.

  `foreign_load(snapshot)` is the share of the machine's CPU capacity, since
  `snapshot()`, spent busy (user, nice, system, irq, softirq, and steal: time
  the hypervisor gave to other guests) outside this process. It is None where
  /proc/stat cannot be read. Resolution is one clock tick (10 ms) per CPU.
  """

  def __init__(self):
    self._ticks = os.sysconf("SC_CLK_TCK") if hasattr(os, "sysconf") else 100
    self._cpus = os.cpu_count() or 1

  def _busy(self):
    try:
      with open("/proc/stat") as f:
        fields = [int(v) for v in f.readline().split()[1:9]]
    except (OSError, ValueError):
      return None
    user, nice, system, _, _, irq, softirq, steal = fields
    return (user + nice + system + irq + softirq + steal) / self._ticks

  def snapshot(self):
    return time.perf_counter(), self._busy(), time.process_time()

  def foreign_load(self, snapshot):
    wall, busy, own = snapshot
    now_busy = self._busy()
    if busy is None or now_busy is None:
      return None
    wall = time.perf_counter() - wall
    own = time.process_time() - own
    return max(0.0, (now_busy - busy - own) / (max(wall, 1e-9) * self._cpus))


def machine_info():
  """The facts a reader needs to compare timings: the date, the CPU model
  and its SIMD flags, usable cores, memory, the Python, Keras, backend and
  NumPy versions. Reads /proc where it exists; imports nothing new."""
  backend = os.environ.get("KERAS_BACKEND", "tensorflow")
  if "keras" in sys.modules:
    backend = sys.modules["keras"].backend.backend()
  package = {"torch": "torch", "jax": "jax", "numpy": "numpy"}.get(
      backend, "tensorflow")
  info = {
      "date": datetime.datetime.now(datetime.timezone.utc).isoformat(
          timespec="seconds"),
      "platform": platform.platform(),
      "processor": platform.processor() or platform.machine(),
      "machine": platform.machine(),
      "cpu_count": os.cpu_count(),
      "usable_cpus": (len(os.sched_getaffinity(0))
                      if hasattr(os, "sched_getaffinity") else os.cpu_count()),
      "python": platform.python_version(),
      "keras": _version("keras"),
      "keras_epi": _version("keras-epi"),
      "numpy": np.__version__,
      "backend": backend,
      "backend_version": _version(package),
  }
  if "tensorflow" in sys.modules:
    info["tensorflow"] = _version("tensorflow")
  try:
    with open("/proc/cpuinfo") as f:
      fields = dict(line.split(":", 1) for line in f.read().splitlines()
                    if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    flags = fields.get("flags", "").split()
    info.update(cpu_model=fields.get("model name"),
                cpu_family=fields.get("cpu family"),
                cpu_model_number=fields.get("model"),
                simd=[f for f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                  "amx_tile") if f in flags])
    with open("/proc/meminfo") as f:
      info["mem_total"] = f.readline().split(":", 1)[1].strip()
  except (OSError, IndexError, ValueError):
    pass
  return info


MACHINE_KEYS = ("cpu_model", "processor", "machine", "cpu_count",
                "usable_cpus", "platform", "keras", "backend",
                "backend_version")


def same_machine(a, b):
  """Whether two `machine_info` records describe the same machine and
  software (`MACHINE_KEYS`: CPU model, cores, platform and the Keras and
  backend versions), so that timings taken on one stand for the other."""
  return all(a.get(k) == b.get(k) for k in MACHINE_KEYS)


def _version(package):
  try:
    return importlib.metadata.version(package)
  except importlib.metadata.PackageNotFoundError:
    return None
