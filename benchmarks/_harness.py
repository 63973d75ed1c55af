"""What the studies share: flags from a config class, the machine record,
the report writer, tables, small statistics and an epoch timer."""

import dataclasses
import json
import os
import subprocess
import tempfile
import time

from absl import app
from absl import flags
import numpy as np

from keras_epi import timing

NOTES = "<!-- notes -->"
_DEFINE = {bool: flags.DEFINE_bool, int: flags.DEFINE_integer,
           float: flags.DEFINE_float, str: flags.DEFINE_string,
           tuple: flags.DEFINE_list}


def flag(default, help_text):
  """A config field that is also an absl flag (see `define_flags`)."""
  return dataclasses.field(default=default, metadata={"help": help_text})


def define_flags(config_class):
  """An absl flag per `flag` field of `config_class`, of its default and
  type (bool, int, float, str; tuple: a list flag)."""
  for f in dataclasses.fields(config_class):
    if "help" in f.metadata:
      default = [str(v) for v in f.default] if f.type is tuple else f.default
      _DEFINE[f.type](f.name, default, f.metadata["help"])


def config_from_flags(config_class, quick=None):
  """A `config_class` of the flags named like its fields (a tuple takes its
  default's element type); with --quick, `quick` ({field: value}) sets the
  fields whose flag was not given."""
  values = {}
  for f in dataclasses.fields(config_class):
    if f.name in flags.FLAGS:
      values[f.name] = flags.FLAGS[f.name].value
      if f.type is tuple:
        kind = type(f.default[0]) if f.default else str
        values[f.name] = tuple(kind(v) for v in values[f.name])
  config = config_class(**values)
  if quick and config.quick:
    config = dataclasses.replace(config, **{
        k: v for k, v in quick.items()
        if k not in flags.FLAGS or not flags.FLAGS[k].present})
  return config


def start(config_class, main, quick=None):
  """Defines the flags of `config_class`, then runs `main(config)`."""
  define_flags(config_class)
  app.run(lambda argv: main(config_from_flags(config_class, quick)))


def scratch(study):
  """Where a quick run of `study` writes: never a committed results/."""
  return os.path.join(tempfile.gettempdir(), "keras_epi_benchmarks", study)


def now():
  return time.strftime("%Y-%m-%d %H:%M:%S %Z")


def machine():
  """`keras_epi.timing.machine_info()` and the checkout's git commit."""
  info = timing.machine_info()
  try:
    info["git_commit"] = subprocess.run(
        ["git", "rev-parse", "HEAD"], capture_output=True, text=True,
        check=True, cwd=os.path.dirname(os.path.abspath(__file__))
    ).stdout.strip()
  except (OSError, subprocess.CalledProcessError):
    info["git_commit"] = None
  return info


def machine_line(results):
  """When and where `results` (``date`` or ``date_utc``, ``machine``) were
  measured, in one sentence."""
  m = results.get("machine") or {}
  simd = "/".join(m.get("simd") or [])
  return (f"{results.get('date') or results.get('date_utc')}; "
          f"{m.get('cpu_model')}{f' ({simd})' if simd else ''}, "
          f"{m.get('usable_cpus')} usable CPUs; TensorFlow "
          f"{m.get('tensorflow')}, Keras {m.get('keras')}, keras_epi "
          f"{m.get('keras_epi')} (git {str(m.get('git_commit'))[:7]}).")


def table(header, rows):
  """The markdown lines of a table; a short row is padded with empty
  cells."""
  return (["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] +
          ["| " + " | ".join(map(str, [*row, *[""] * (len(header) - len(row))]))
           + " |" for row in rows])


def fmt(value, spec, none="-", unit=""):
  return none if value is None else format(value, spec) + unit


def spread(values):
  """The median, min and max of `values`."""
  return {"median": float(np.median(values)), "min": float(np.min(values)),
          "max": float(np.max(values))}


def median(values):
  """The median of the values that are not None, or None."""
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def error_line(e):
  return f"{type(e).__name__}: {(str(e).strip().splitlines() or [''])[0]}"


def set_threads(threads):
  """TensorFlow's intra- and inter-op threads (0: TensorFlow's choice)."""
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  if threads:
    tf.config.threading.set_intra_op_parallelism_threads(threads)
    tf.config.threading.set_inter_op_parallelism_threads(threads)


def write_report(path, results, markdown=None):
  """Writes `results` as JSON to `path` and `markdown` (unless None) beside
  it as .md, keeping the text from the line `NOTES` on of an existing .md
  (findings written by hand) below the new text."""
  os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
  with open(path, "w") as f:
    json.dump(results, f, indent=2, default=str)
    f.write("\n")
  if markdown is None:
    return
  md = os.path.splitext(path)[0] + ".md"
  if os.path.exists(md):
    with open(md) as f:
      old = f.read()
    if NOTES in old:
      markdown = markdown.rstrip("\n") + "\n\n" + old[old.index(NOTES):]
  with open(md, "w") as f:
    f.write(markdown)
  print(markdown)


def epoch_timer(callback_class=None):
  """A callback (of `callback_class`, by default Keras') recording each
  epoch's wall seconds (`.seconds`) and this process's CPU seconds
  (`.cpu_seconds`)."""
  if callback_class is None:
    import keras  # pylint: disable=g-import-not-at-top
    callback_class = keras.callbacks.Callback

  class EpochTimer(callback_class):

    def __init__(self):
      super().__init__()
      self.seconds, self.cpu_seconds, self._start = [], [], None

    def on_epoch_begin(self, epoch, logs=None):
      self._start = (time.perf_counter(), time.process_time())

    def on_epoch_end(self, epoch, logs=None):
      self.seconds.append(time.perf_counter() - self._start[0])
      self.cpu_seconds.append(time.process_time() - self._start[1])

  return EpochTimer()
