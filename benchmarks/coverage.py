r"""Coverage of keras_epi over the test zoo: what works out of the box.

For every model of `tests/zoo_models.py` (`ZOO_MODELS`: one model per
keras.applications family, keras.io patterns, user-defined layers, a
channels_first model) and `tests/hub_models.py` (`HUB_MODELS`: keras_hub
backbones and tasks), using only keras_epi's public API and the test oracle:

* out of the box: `keras_epi.channel_groups(model)` with no `ignore=`. If it
  fails with keras_epi's "unknown layers" error, the `ignore=[...]` list the
  message suggests is used for the remaining steps (and recorded);
* groups: the number of channel groups, the channels they hold beyond the
  stem (the first group, which `select_channels` keeps whole by default), and
  the output channels of every Conv*/Dense layer (shared layers once);
* MACs: `keras_epi.count_macs` of the dense model, and of the model pruned by
  a fixed plan, ``select_channels(model, magnitude_importance(model, groups),
  ratio=0.5, budget="neurons")`` (half the prunable channels removed);
* .keras reload: the pruned model saved as `.keras` and loaded back with
  `keras.saving.load_model` (custom_objects of the zoo's custom layers); the
  max absolute difference of the two models' outputs on a random batch;
* oracle: `oracle.randomize_statistics(model)` (done first, before the plan:
  it changes BatchNormalization statistics and biases, not the kernels the
  magnitude plan reads), then `oracle.check_equivalence(model, x,
  copy=False)`: the relative L2 error between the model with a random half of
  every group's channels zeroed and that model with the channels removed.
  Skipped for channels_first (TensorFlow on CPU cannot run NCHW convolutions);
  `count_macs` is compared with the hand count of `tests/zoo_models.py`
  instead.

Inputs are random, 0..255, batch 2. Every step catches its own errors, so a
model that fails one step still reports the others.

  python -m benchmarks.coverage                  # all, ~5-10 min on 2 cores
  python -m benchmarks.coverage --only=ResNet50,hub:VGG --output_dir=/tmp/cov
"""

import ast
import gc
import logging as std_logging
import os
import re
import tempfile
import time
import traceback

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np

from benchmarks import common
import keras_epi
from tests import oracle
from tests import zoo_models

_ONLY = flags.DEFINE_list(
    "only", None,
    "Run only these models (names from ZOO_MODELS or HUB_MODELS; prefix "
    "'zoo:' or 'hub:' where a name is in both, e.g. hub:Xception).")
_OUTPUT_DIR = flags.DEFINE_string(
    "output_dir", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                               "results"),
    "Where coverage.json and coverage.md are written.")
_RATIO = flags.DEFINE_float("ratio", 0.5,
                            "Neuron ratio removed by the fixed plan.")
_ATOL = flags.DEFINE_float(
    "oracle_tolerance", 1e-4,
    "Relative oracle error above which a model is marked as failing.")

_CUSTOM = ("custom_channel_affine", "custom_conv_bn_act", "custom_residual")
_KERAS_IO = ("augment_keras_io", "augment_all", "unet", "timeseries_conv1d",
             "volume_conv3d", "multi_io", "shared_conv",
             "nested_dynamic_functional", "nested_dynamic_sequential")


def _family(source, name):
  if source == "hub":
    return "keras_hub"
  if name == "channels_first":
    return "channels_first"
  if name in _CUSTOM:
    return "custom layers"
  if name in _KERAS_IO:
    return "keras.io"
  return "keras.applications"


def _models():
  """[(source, name, builder)] in table order."""
  models = [("zoo", n, b) for n, b in zoo_models.ZOO_MODELS.items()]
  try:
    from tests import hub_models  # pylint: disable=g-import-not-at-top
    models += [("hub", n, b) for n, b in hub_models.HUB_MODELS.items()]
  except Exception as e:  # pylint: disable=broad-except
    logging.error("Cannot import tests.hub_models: %s", e)
  if _ONLY.value:
    wanted = set(_ONLY.value)
    models = [m for m in models
              if m[1] in wanted or f"{m[0]}:{m[1]}" in wanted]
    found = {m[1] for m in models} | {f"{m[0]}:{m[1]}" for m in models}
    missing = sorted(wanted - found)
    if missing:
      raise app.UsageError(f"--only names unknown models: {missing}")
  return models


def _first_line(e):
  text = str(e).strip().splitlines()
  return f"{type(e).__name__}: {text[0] if text else ''}"[:300]


def _flat(outputs):
  return np.concatenate([
      np.ravel(keras.ops.convert_to_numpy(v)).astype(np.float64)
      for v in keras.tree.flatten(outputs)])


def _walk_layers(layer, seen):
  """Every layer under `layer` once (nested models, composite layers)."""
  for sub in getattr(layer, "_layers", []):  # pylint: disable=protected-access
    if id(sub) in seen:
      continue
    seen.add(id(sub))
    yield sub
    yield from _walk_layers(sub, seen)


def _output_channels(model):
  """Output channels of every conv / Dense layer (each layer once)."""
  total = 0
  L = keras.layers
  for layer in _walk_layers(model, set()):
    if isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
      kernel = layer.kernel
      total += int(kernel.shape[-2]) * int(kernel.shape[-1])
    elif isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D, L.Conv1DTranspose,
                            L.Conv2DTranspose, L.Conv3DTranspose,
                            L.SeparableConv1D, L.SeparableConv2D)):
      total += int(layer.filters)
    elif isinstance(layer, L.Dense):
      total += int(layer.units)
  return total


def _suggested_ignore(message):
  match = re.search(r"ignore=(\[.*?\])", message, re.S)
  if not match:
    return None
  try:
    return list(ast.literal_eval(match.group(1)))
  except (ValueError, SyntaxError):
    return None


def _full(e):
  return f"{type(e).__name__}: {str(e).strip()}"[:2000]


def _step(row, key, fn):
  """Runs fn(); on error records its first line under row['errors'][key]
  (the whole message under row['error_messages'][key])."""
  try:
    return fn()
  except Exception as e:  # pylint: disable=broad-except
    row["errors"][key] = _first_line(e)
    row["error_messages"][key] = _full(e)
    logging.warning("%s %s: %s\n%s", row["model"], key, _first_line(e),
                    traceback.format_exc(limit=4))
    return None


class _LibraryWarnings(std_logging.Handler):
  """Collects the distinct warnings keras_epi logs (through absl) while a
  model is measured, e.g. groups kept unpruned."""

  def __init__(self):
    super().__init__(level=std_logging.WARNING)
    self.messages = []

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("keras_epi") and message not in self.messages:
      self.messages.append(message)


def _measure(source, name, builder, workdir):
  handler = _LibraryWarnings()
  logging.get_absl_logger().addHandler(handler)
  try:
    row = _measure_model(source, name, builder, workdir)
  finally:
    logging.get_absl_logger().removeHandler(handler)
  row["library_warnings"] = handler.messages
  return row


def _measure_model(source, name, builder, workdir):
  row = {"source": source, "family": _family(source, name), "model": name,
         "errors": {}, "error_messages": {}}
  start = time.perf_counter()
  built = _step(row, "build", builder)
  if built is None:
    row["seconds"] = time.perf_counter() - start
    return row
  model, shape = built
  row["input_shape"] = shape
  row["params"] = int(model.count_params())
  x = zoo_models.random_inputs(shape)
  channels_first = name == "channels_first"
  if not channels_first:
    _step(row, "randomize_statistics",
          lambda: oracle.randomize_statistics(model))

  # Out of the box, then with the suggested `ignore=` if there is one.
  ignore = []
  groups = None
  try:
    groups = keras_epi.channel_groups(model)
    row["out_of_the_box"] = "yes"
  except Exception as e:  # pylint: disable=broad-except
    row["out_of_the_box"] = _first_line(e)
    row["out_of_the_box_message"] = _full(e)
    suggested = _suggested_ignore(str(e))
    if suggested:
      ignore = suggested
      groups = _step(row, "channel_groups_with_ignore",
                     lambda: keras_epi.channel_groups(model, ignore=ignore))
  row["ignore"] = ignore
  if groups is not None:
    row["groups"] = len(groups)
    row["residual_groups"] = sum(g.residual for g in groups)
    row["stem"] = groups[0].name if groups else None
    row["prunable_channels"] = int(sum(g.size for g in groups[1:]))
  row["output_channels"] = _step(row, "output_channels",
                                 lambda: _output_channels(model))

  dense_macs = _step(row, "count_macs", lambda: keras_epi.count_macs(model))
  row["macs_dense"] = dense_macs
  if channels_first:
    row["macs_hand_count"] = zoo_models.CHANNELS_FIRST_MACS
    row["macs_match_hand_count"] = dense_macs == zoo_models.CHANNELS_FIRST_MACS

  # The fixed plan: half the prunable channels by magnitude.
  pruned = None
  if groups is not None:
    def plan():
      scores = keras_epi.magnitude_importance(model, groups)
      return keras_epi.select_channels(model, scores, ratio=_RATIO.value,
                                       budget="neurons", ignore=ignore)
    t = time.perf_counter()
    keep = _step(row, "select_channels", plan)
    if keep is not None:
      row["plan_kept_channels"] = int(sum(len(k) for k in keep.values()))
      pruned = _step(row, "prune_model",
                     lambda: keras_epi.prune_model(model, keep, ignore=ignore))
      row["prune_seconds"] = time.perf_counter() - t
  if pruned is not None:
    macs = _step(row, "count_macs_pruned",
                 lambda: keras_epi.count_macs(pruned))
    row["macs_plan"] = macs
    if macs is not None and dense_macs:
      row["macs_plan_fraction"] = macs / dense_macs
    row["params_plan"] = int(pruned.count_params())

  # .keras round trip of the pruned model.
  if pruned is not None:
    path = os.path.join(workdir, f"{source}_{name}.keras")

    def round_trip():
      pruned.save(path)
      loaded = keras.saving.load_model(
          path, custom_objects=zoo_models.CUSTOM_OBJECTS)
      if channels_first:
        return None  # TF on CPU cannot run the NCHW convolutions
      a = _flat(pruned(x, training=False))
      b = _flat(loaded(x, training=False))
      if a.shape != b.shape:
        raise ValueError(f"output sizes differ: {a.shape} vs {b.shape}")
      return float(np.max(np.abs(a - b)))

    t = time.perf_counter()
    row["reload_max_abs_diff"] = _step(row, "keras_reload", round_trip)
    row["reload_ok"] = "keras_reload" not in row["errors"]
    row["reload_seconds"] = time.perf_counter() - t
    if os.path.exists(path):
      os.remove(path)

  # The dead-channel equivalence oracle (mutates `model`: runs last).
  if channels_first:
    row["oracle"] = "skipped (channels_first: no NCHW conv on TF CPU)"
  elif groups is not None:
    def run_oracle():
      return float(oracle.check_equivalence(model, x, copy=False,
                                            ignore=ignore)[3])
    row["oracle_error"] = _step(row, "oracle", run_oracle)
  row["seconds"] = time.perf_counter() - start
  return row


def _fmt_macs(macs):
  if macs is None:
    return "n/a"
  return f"{macs / 1e6:.2f} M" if macs < 1e9 else f"{macs / 1e9:.3f} G"


def _cell(text):
  return str(text).replace("|", "\\|").replace("\n", " ")


def _markdown(results):
  lines = [
      "# keras_epi coverage of the test zoo",
      "",
      f"Date {results['date']}; keras {results['machine'].get('keras')}, "
      f"keras_hub {results['keras_hub']}, tensorflow "
      f"{results['machine']['tensorflow']}, keras_epi "
      f"{results['machine'].get('keras_epi')} (git "
      f"{(results['machine'].get('git_commit') or 'n/a')[:7]}, working tree "
      "may differ); "
      f"{results['machine'].get('usable_cpus')} CPUs "
      f"({results['machine'].get('cpu_model')}). "
      f"Total {results['total_seconds']:.0f} s.",
      "",
      "Produced by `python -m benchmarks.coverage` (see its docstring). "
      "Plan: `select_channels(model, magnitude_importance(model, groups), "
      f"ratio={results['setup']['ratio']}, budget=\"neurons\")` (the stem "
      "group stays whole). *prunable / conv+dense ch.*: channels of all "
      "groups but the stem / output channels of every conv and Dense layer. "
      "*oracle error*: relative L2 error of `oracle.check_equivalence` "
      "(copy=False) after `oracle.randomize_statistics`. *.keras reload*: max "
      "|output difference| of the pruned model and its `.keras` reload. "
      "Inputs: random, 0..255, batch 2, the shapes of tests/zoo_models.py "
      "and tests/hub_models.py.",
      "",
      "| family | model | out of the box | groups | prunable / conv+dense ch. "
      "| MACs dense | MACs at plan (fraction) | oracle error | .keras reload "
      "| s |",
      "|---|---|---|---|---|---|---|---|---|---|",
  ]
  for r in results["models"]:
    errors = r["errors"]
    ootb = r.get("out_of_the_box", errors.get("build", "n/a"))
    if r.get("ignore"):
      lines_of = r["out_of_the_box_message"].splitlines()
      if len(lines_of) > 1:  # the first unknown layer and why
        ootb += f" [{lines_of[1].strip()}]"
      ootb += f" (then ignore={r['ignore']})"
    groups = r.get("groups", errors.get("channel_groups_with_ignore", "-"))
    chans = (f"{r.get('prunable_channels', '-')} / "
             f"{r.get('output_channels') or '-'}")
    if "macs_plan_fraction" in r:
      plan = f"{_fmt_macs(r['macs_plan'])} ({r['macs_plan_fraction']:.3f})"
    else:
      plan = next((errors[k] for k in ("select_channels", "prune_model",
                                       "count_macs_pruned") if k in errors),
                  "-")
    dense = _fmt_macs(r.get("macs_dense")) if r.get("macs_dense") else \
        errors.get("count_macs", "-")
    if r["model"] == "channels_first" and r.get("macs_dense"):
      dense += (f" (hand count {_fmt_macs(r['macs_hand_count'])}: "
                f"{'match' if r['macs_match_hand_count'] else 'MISMATCH'})")
    if "oracle" in r:
      orc = r["oracle"]
    elif r.get("oracle_error") is not None:
      orc = f"{r['oracle_error']:.1e}"
      if r["oracle_error"] > results["setup"]["oracle_tolerance"]:
        orc += " **FAIL**"
    else:
      orc = errors.get("oracle", "-")
    if "reload_ok" not in r:
      reload = "-"
    elif r["reload_ok"]:
      diff = r["reload_max_abs_diff"]
      reload = "ok" if diff is None else f"ok ({diff:.1e})"
    else:
      reload = errors["keras_reload"]
    lines.append("| " + " | ".join(_cell(c) for c in (
        r["family"], r["model"], ootb, groups, chans, dense, plan, orc,
        reload, f"{r['seconds']:.1f}")) + " |")
  failures = [(r["model"], k, v[:400]) for r in results["models"]
              for k, v in r["error_messages"].items()]
  notes = [(r["model"], w) for r in results["models"]
           for w in r.get("library_warnings", [])]
  if notes:
    lines += ["", "## keras_epi warnings", ""]
    lines += [f"- {_cell(m)}: {_cell(w)}" for m, w in notes]
  lines += ["", "## Errors", ""]
  if failures:
    lines += [f"- {_cell(m)}, {k}: `{_cell(v)}`" for m, k, v in failures]
  else:
    lines.append("None.")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  import keras_hub  # pylint: disable=g-import-not-at-top
  models = _models()
  rows = []
  total = time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    for i, (source, name, builder) in enumerate(models):
      logging.info("[%d/%d] %s:%s", i + 1, len(models), source, name)
      row = _measure(source, name, builder, workdir)
      logging.info("%s: %.1f s, errors %s", name, row["seconds"],
                   row["errors"] or "none")
      rows.append(row)
      keras.backend.clear_session()
      gc.collect()
  results = {
      "date": time.strftime("%Y-%m-%d %H:%M"),
      "machine": common.machine_info(),
      "keras_hub": keras_hub.__version__,
      "setup": {"ratio": _RATIO.value, "budget": "neurons",
                "importance": "magnitude",
                "oracle_tolerance": _ATOL.value, "batch": 2,
                "only": _ONLY.value},
      "total_seconds": time.perf_counter() - total,
      "models": rows,
  }
  common.write_results(_OUTPUT_DIR.value, "coverage", results,
                       _markdown(results))


if __name__ == "__main__":
  app.run(main)
