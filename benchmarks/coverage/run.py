"""Coverage of keras_epi over the test zoos: what works out of the box.

  python -m benchmarks.coverage.run            # all models, results/
  python -m benchmarks.coverage.run --quick    # 3 models, to a scratch dir
"""

import ast
import dataclasses
import gc
import logging as std_logging
import os
import re
import tempfile
import time

from absl import app
from absl import logging
import keras
import numpy as np

from benchmarks import _harness
import keras_epi
from tests import oracle
from tests import zoo_models


@dataclasses.dataclass(frozen=True)
class Config:
  only: tuple = _harness.flag((), "Only these models (zoo or hub names; "
                              "zoo: or hub: where a name is in both).")
  ratio: float = 0.5
  budget: str = "neurons"
  importance: str = "magnitude"
  oracle_tolerance: float = 1e-4
  batch: int = 2
  output_dir: str = _harness.flag("benchmarks/coverage/results",
                                  "Where coverage.json and .md go.")
  quick: bool = _harness.flag(False, "Smoke run: 3 models, to a scratch dir.")

_QUICK = {"only": ("ResNet50", "custom_residual", "channels_first"),
          "output_dir": _harness.scratch("coverage")}
_L = keras.layers
_CONVS = (_L.Conv1D, _L.Conv2D, _L.Conv3D, _L.Conv1DTranspose,
          _L.Conv2DTranspose, _L.Conv3DTranspose, _L.SeparableConv1D,
          _L.SeparableConv2D, _L.Dense)


def _models(only):
  """[(source, name, builder)] in table order, restricted to `only`."""
  from tests import hub_models  # pylint: disable=g-import-not-at-top
  from tests import transformer_models  # pylint: disable=g-import-not-at-top
  from tests import user_models  # pylint: disable=g-import-not-at-top
  models = [("zoo", n, b) for n, b in zoo_models.ZOO_MODELS.items()] + [
      ("hub", n, b) for n, b in hub_models.HUB_MODELS.items()] + [
          ("user", n, b) for n, b in user_models.USER_MODELS.items()] + [
              ("transformer", n, b)
              for n, b in transformer_models.TRANSFORMERS.items()]
  if only:
    models = [m for m in models if m[1] in only or f"{m[0]}:{m[1]}" in only]
    missing = set(only) - {x for s, n, _ in models for x in (n, f"{s}:{n}")}
    if missing:
      raise app.UsageError(f"--only names unknown models: {sorted(missing)}")
  return models


def _full(e):
  return f"{type(e).__name__}: {str(e).strip()}"[:2000]


def _flat(outputs):
  return np.concatenate([
      np.ravel(keras.ops.convert_to_numpy(v)).astype(np.float64)
      for v in keras.tree.flatten(outputs)])


def _output_channels(layer, seen):
  """Output channels of every conv and Dense layer under `layer` (nested
  models and composite layers included; a shared layer once)."""
  total = 0
  for sub in getattr(layer, "_layers", []):  # pylint: disable=protected-access
    if id(sub) not in seen:
      seen.add(id(sub))
      if isinstance(sub, (_L.DepthwiseConv1D, _L.DepthwiseConv2D)):
        total += int(sub.kernel.shape[-2]) * int(sub.kernel.shape[-1])
      elif isinstance(sub, _CONVS):
        total += int(sub.units if isinstance(sub, _L.Dense) else sub.filters)
      total += _output_channels(sub, seen)
  return total


class _LibraryWarnings(std_logging.Handler):
  """The distinct warnings keras_epi logs (through absl) meanwhile."""
  messages = None

  def emit(self, record):
    message = record.getMessage()
    if message.startswith("keras_epi") and message not in self.messages:
      self.messages.append(message)


def _measure(config, row, builder, workdir):
  """Fills one model's `row`; every step records its own error."""
  def step(key, fn):
    try:
      return fn()
    except Exception as e:  # pylint: disable=broad-except
      row["errors"][key] = _harness.error_line(e)[:300]
      row["error_messages"][key] = _full(e)
      logging.warning("%s %s: %s", row["model"], key, _full(e))

  built = step("build", builder)
  if built is None:
    return
  if row["source"] == "transformer":  # (model, example inputs)
    model, x = built
    shape = _input_shapes(model, x)
  else:
    model, shape = built
    x = zoo_models.random_inputs(shape, batch=config.batch)
  row.update(input_shape=shape, params=int(model.count_params()))
  nchw = row["model"] == "channels_first"  # TF on CPU runs no NCHW conv
  if not nchw:  # BN statistics and biases, not the kernels the plan reads
    step("randomize_statistics", lambda: oracle.randomize_statistics(model))
  ignore, groups = [], None
  try:
    groups, row["out_of_the_box"] = keras_epi.channel_groups(model), "yes"
  except Exception as e:  # pylint: disable=broad-except
    row["out_of_the_box"] = _harness.error_line(e)[:300]
    row["out_of_the_box_message"] = _full(e)
    match = re.search(r"ignore=(\[.*?\])", str(e), re.S)
    try:
      ignore = list(ast.literal_eval(match.group(1))) if match else []
    except (ValueError, SyntaxError):
      pass
    if ignore:
      groups = step("channel_groups_with_ignore",
                    lambda: keras_epi.channel_groups(model, ignore=ignore))
  row["ignore"] = ignore
  if groups is not None:
    row.update(groups=len(groups),
               residual_groups=sum(g.residual for g in groups),
               stem=groups[0].name if groups else None,
               prunable_channels=int(sum(g.size for g in groups[1:])))
  row["output_channels"] = step("output_channels",
                                lambda: _output_channels(model, set()))
  row["macs_dense"] = dense = step(  # at the example size (open sizes)
      "count_macs", lambda: keras_epi.count_macs(model, input_shape=shape))
  if nchw:
    row.update(macs_hand_count=zoo_models.CHANNELS_FIRST_MACS,
               macs_match_hand_count=dense == zoo_models.CHANNELS_FIRST_MACS)
  pruned, keep, t = None, None, time.perf_counter()
  if groups is not None:
    keep = step("select_channels", lambda: keras_epi.select_channels(
        model, keras_epi.magnitude_importance(model, groups),
        ratio=config.ratio, budget=config.budget, ignore=ignore))
  if keep is not None:
    row["plan_kept_channels"] = int(sum(len(k) for k in keep.values()))
    pruned = step("prune_model",
                  lambda: keras_epi.prune_model(model, keep, ignore=ignore))
    row["prune_seconds"] = time.perf_counter() - t
  if pruned is not None:
    row["macs_plan"] = macs = step(
        "count_macs_pruned",
        lambda: keras_epi.count_macs(pruned, input_shape=shape))
    if macs is not None and dense:
      row["macs_plan_fraction"] = macs / dense
    row["params_plan"] = int(pruned.count_params())
    path = os.path.join(workdir, f"{row['source']}_{row['model']}.keras")

    def round_trip():
      pruned.save(path)
      loaded = keras.saving.load_model(
          path, custom_objects=zoo_models.CUSTOM_OBJECTS)
      os.remove(path)
      if nchw:
        return None
      a, b = _flat(pruned(x, training=False)), _flat(loaded(x, training=False))
      if a.shape != b.shape:
        raise ValueError(f"output sizes differ: {a.shape} vs {b.shape}")
      return float(np.max(np.abs(a - b)))

    t = time.perf_counter()
    row["reload_max_abs_diff"] = step("keras_reload", round_trip)
    row.update(reload_ok="keras_reload" not in row["errors"],
               reload_seconds=time.perf_counter() - t)
  if groups is not None and not nchw:
    step("through_norms", lambda: _through_norms(config, row, model, x,
                                                 shape, ignore, len(groups)))
  if nchw:
    row["oracle"] = "skipped (channels_first: no NCHW conv on TF CPU)"
  elif groups is not None:  # mutates `model`: runs last
    row["oracle_error"] = step("oracle", lambda: float(
        oracle.check_equivalence(model, x, copy=False, ignore=ignore)[3]))


def _input_shapes(model, x):
  """Per-example shapes of `x` in the order of `model.inputs`."""
  if isinstance(x, dict):
    return [tuple(x[t.name].shape[1:]) for t in model.inputs]
  if isinstance(x, (list, tuple)):
    return [tuple(a.shape[1:]) for a in x]
  return tuple(x.shape[1:])


def _through_norms(config, row, model, x, shape, ignore, exact_groups):
  """The same plan with ``through_norms=True``, where that finds more
  groups (the model width through LayerNormalization / RMSNormalization):
  its groups, MACs and the pruned output's difference from the dense one
  (approximate by design; no oracle)."""
  groups = keras_epi.channel_groups(model, ignore=ignore, through_norms=True)
  row["groups_through_norms"] = len(groups)
  if len(groups) == exact_groups:
    return
  keep = keras_epi.select_channels(
      model, keras_epi.magnitude_importance(model, groups), ratio=config.ratio,
      budget=config.budget, ignore=ignore, through_norms=True)
  pruned = keras_epi.prune_model(model, keep, ignore=ignore,
                                 through_norms=True)
  macs = keras_epi.count_macs(pruned, input_shape=shape)
  if row.get("macs_dense"):
    row["macs_through_norms_fraction"] = macs / row["macs_dense"]
  row["width_cut"] = any(g.residual and g.name in keep and
                         len(keep[g.name]) < g.size for g in groups)


def _macs(macs):
  return ("n/a" if macs is None else f"{macs / 1e6:.2f} M" if macs < 1e9
          else f"{macs / 1e9:.3f} G")


def _cell(text):
  return str(text).replace("|", "\\|").replace("\n", " ")


def _cells(r, tolerance):
  """The table cells of row `r`."""
  errors = r["errors"]

  def first(*keys):
    return next((errors[k] for k in keys if k in errors), "-")

  ootb = r.get("out_of_the_box", errors.get("build", "n/a"))
  if r.get("ignore"):
    lines = r["out_of_the_box_message"].splitlines()
    ootb += (f" [{lines[1].strip()}]" if len(lines) > 1 else "") + (
        f" (then ignore={r['ignore']})")
  plan = (f"{_macs(r['macs_plan'])} ({r['macs_plan_fraction']:.3f})"
          if "macs_plan_fraction" in r else
          first("select_channels", "prune_model", "count_macs_pruned"))
  dense = _macs(r["macs_dense"]) if r.get("macs_dense") else first(
      "count_macs")
  if "macs_hand_count" in r and r.get("macs_dense"):
    dense += (f" (hand count {_macs(r['macs_hand_count'])}: "
              f"{'match' if r['macs_match_hand_count'] else 'MISMATCH'})")
  orc = r.get("oracle") or first("oracle")
  if "oracle" not in r and r.get("oracle_error") is not None:
    orc = f"{r['oracle_error']:.1e}" + (
        " **FAIL**" if r["oracle_error"] > tolerance else "")
  width = "-" if "groups_through_norms" not in r else (
      "same" if r["groups_through_norms"] == r.get("groups") else
      f"{r['groups_through_norms']}" + (
          f", {r['macs_through_norms_fraction']:.3f}"
          if "macs_through_norms_fraction" in r else ""))
  if "through_norms" in errors:
    width = errors["through_norms"]
  diff = r.get("reload_max_abs_diff")
  reload = ("-" if "reload_ok" not in r else errors["keras_reload"]
            if not r["reload_ok"] else "ok" if diff is None else
            f"ok ({diff:.1e})")
  return [_cell(c) for c in (
      r["family"], r["model"], ootb,
      r.get("groups", errors.get("channel_groups_with_ignore", "-")),
      f"{r.get('prunable_channels', '-')} / {r.get('output_channels') or '-'}",
      dense, plan, orc, reload, width, f"{r['seconds']:.1f}")]


def markdown(results):
  """The report of `results` (as written by `main`)."""
  models = results["models"]
  warnings = [f"- {_cell(r['model'])}: {_cell(w)}" for r in models
              for w in r.get("library_warnings", [])]
  failures = [f"- {_cell(r['model'])}, {k}: `{_cell(v[:400])}`"
              for r in models for k, v in r["error_messages"].items()]
  return "\n".join([
      "# keras_epi coverage of the test zoo", "",
      f"{_harness.machine_line(results)} keras_hub {results['keras_hub']}. "
      f"Total {results['total_seconds']:.0f} s. Columns: "
      "benchmarks/coverage/README.md.", "", *_harness.table(
          ["family", "model", "out of the box", "groups",
           "prunable / conv+dense ch.", "MACs dense",
           "MACs at plan (fraction)", "oracle error", ".keras reload",
           "through_norms: groups, MACs at plan", "s"],
          [_cells(r, results["setup"]["oracle_tolerance"]) for r in models]),
      *(["", "## keras_epi warnings", "", *warnings] if warnings else []),
      "", "## Errors", "", *(failures or ["None."])]) + "\n"


def main(config):
  import keras_hub  # pylint: disable=g-import-not-at-top
  rows, start = [], time.perf_counter()
  with tempfile.TemporaryDirectory() as workdir:
    for source, name, builder in _models(config.only):
      logging.info("%s:%s", source, name)
      handler, t = _LibraryWarnings(std_logging.WARNING), time.perf_counter()
      handler.messages = []
      row = {"source": source, "model": name, "errors": {},
             "error_messages": {}, "family": (
                 "keras_hub" if source == "hub" else "transformers"
                 if source == "transformer" else "users' models"
                 if source == "user" else "custom layers"
                 if name.startswith("custom_") else name
                 if name == "channels_first" else "keras.applications"
                 if hasattr(keras.applications, name) else "keras.io")}
      logging.get_absl_logger().addHandler(handler)
      try:
        _measure(config, row, builder, workdir)
      finally:
        logging.get_absl_logger().removeHandler(handler)
      rows.append(dict(row, seconds=time.perf_counter() - t,
                       library_warnings=handler.messages))
      keras.backend.clear_session()
      gc.collect()
  results = {"date": _harness.now(), "machine": _harness.machine(),
             "keras_hub": keras_hub.__version__,
             "setup": dataclasses.asdict(config),
             "total_seconds": time.perf_counter() - start, "models": rows}
  _harness.write_report(os.path.join(config.output_dir, "coverage.json"),
                        results, markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, _QUICK)
