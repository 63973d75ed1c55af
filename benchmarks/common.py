"""Helpers shared by the benchmark scripts: machine facts, foreign CPU load
and epoch timing."""

import json
import os
import platform
import subprocess
import time

from absl import logging
import numpy as np
import tensorflow as tf


def machine_info():
  """The facts a reader needs to compare timings: CPU, cores, versions."""
  info = {"platform": platform.platform(), "python": platform.python_version(),
          "tensorflow": tf.__version__, "numpy": np.__version__,
          "os_cpu_count": os.cpu_count(),
          "usable_cpus": len(os.sched_getaffinity(0)),
          "gpus": [d.name for d in tf.config.list_logical_devices("GPU")]}
  if os.environ.get("TF_USE_LEGACY_KERAS") != "1":
    import keras  # pylint: disable=g-import-not-at-top
    import keras_epi  # pylint: disable=g-import-not-at-top
    info.update(keras=keras.__version__, keras_epi=keras_epi.__version__)
  try:
    with open("/proc/cpuinfo") as f:
      fields = dict(line.split(":", 1) for line in f.read().splitlines()
                    if ":" in line)
    fields = {k.strip(): v.strip() for k, v in fields.items()}
    cpu_flags = fields.get("flags", "").split()
    info.update(cpu_model=fields.get("model name"),
                cpu_family=fields.get("cpu family"),
                cpu_model_number=fields.get("model"),
                cores_per_socket=fields.get("cpu cores"),
                simd=[f for f in ("avx2", "fma", "avx512f", "avx512_bf16",
                                  "amx_tile") if f in cpu_flags])
    with open("/proc/meminfo") as f:
      info["mem_total"] = f.readline().split(":", 1)[1].strip()
  except OSError as e:
    logging.warning("Cannot read /proc: %s", e)
  try:
    info["git_commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
        check=True, cwd=os.path.dirname(os.path.abspath(__file__))
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    info["git_commit"] = None
  return info


class CpuMonitor:
  """CPU time used by others than this process, from /proc/stat.

  `foreign_load(snapshot)` is the share of the machine's CPU capacity, since
  `snapshot()`, spent busy (user, nice, system, irq, softirq, and steal: time
  the hypervisor gave to other guests) outside this process. It is None where
  /proc/stat cannot be read. Resolution is one clock tick (10 ms) per CPU.
  """

  def __init__(self):
    self._ticks = os.sysconf("SC_CLK_TCK")
    self._cpus = os.cpu_count()

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
    return max(0.0, (now_busy - busy - own) / (wall * self._cpus))


def throughput(models, images, rounds):
  """Inference examples per second of each model in `models` (a dict),
  called alternately `rounds` times after one tracing call; medians."""
  calls = {name: tf.function(lambda x, m=m: m(x, training=False))
           for name, m in models.items()}
  for call in calls.values():
    call(images).numpy()  # trace
  seconds = {name: [] for name in models}
  for _ in range(rounds):
    for name, call in calls.items():
      start = time.perf_counter()
      call(images).numpy()
      seconds[name].append(time.perf_counter() - start)
  return {name: len(images) / float(np.median(s))
          for name, s in seconds.items()}


def epoch_timer(callback_class):
  """A callback, subclassing `callback_class` (Keras 3's or tf_keras'), that
  records every epoch's wall time in `.seconds` and the CPU time this process
  used in it (all threads) in `.cpu_seconds`."""

  class EpochTimer(callback_class):

    def __init__(self):
      super().__init__()
      self.seconds = []
      self.cpu_seconds = []
      self._start = None

    def on_epoch_begin(self, epoch, logs=None):
      self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
      self.seconds.append(time.perf_counter() - self._start[0])
      self.cpu_seconds.append(time.process_time() - self._start[1])

  return EpochTimer()


def write_results(output_dir, name, results, markdown):
  """Writes ``{name}.json`` (results) and ``{name}.md`` (markdown text) into
  `output_dir`, and prints the markdown."""
  os.makedirs(output_dir, exist_ok=True)
  with open(os.path.join(output_dir, name + ".json"), "w") as f:
    json.dump(results, f, indent=2, default=str)
    f.write("\n")
  with open(os.path.join(output_dir, name + ".md"), "w") as f:
    f.write(markdown)
  print(markdown)
