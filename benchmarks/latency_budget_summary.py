r"""Medians over repeated runs of `latency_budget.py`.

One run of `latency_budget.py` gives one figure per plan; run to run on a
shared host the same figure moves by about 10%. This reads every
``{row}_run{k}.json`` of `--runs_dir` (the same settings run k times, one
run at a time), and writes per row, model and plan the median and the range
over runs of the measured speed-up, the error of time/dense, the absolute
prediction error, the MAC fraction and how far the measured speed-up is
from the one asked.

  python -m benchmarks.latency_budget_summary \
    --runs_dir=benchmarks/results/latency_budget_runs   # summary.{json,md}
"""

import collections
import glob
import json
import os
import re

from absl import app
from absl import flags
import numpy as np

from benchmarks import common

_RUNS_DIR = flags.DEFINE_string(
    "runs_dir", "benchmarks/results/latency_budget_runs",
    "Directory of {row}_run{k}.json files from latency_budget.py.")
_NAME = flags.DEFINE_string("name", "summary",
                            "Output name in --runs_dir (.json and .md).")

_RUN_FILE = re.compile(r"^(?P<row>.+)_run(?P<k>\d+)\.json$")
_FIGURES = ("measured_speedup", "relative_error", "prediction_error",
            "macs_fraction", "predicted_speedup", "speedup_miss")


def load_runs(directory):
  """``{row: [results of run 1, run 2, ...]}`` (in run order)."""
  runs = collections.defaultdict(list)
  for path in sorted(glob.glob(os.path.join(directory, "*_run*.json"))):
    match = _RUN_FILE.match(os.path.basename(path))
    if not match:
      continue
    with open(path, encoding="utf-8") as f:
      runs[match["row"]].append((int(match["k"]), json.load(f)))
  return {row: [r for _, r in sorted(found, key=lambda kr: kr[0])]
          for row, found in sorted(runs.items())}


def summarize(runs):
  """Per row: settings, and per model and plan the figures over runs.

  A plan refused in some runs (an unreachable target) counts its refusals
  and is summarised over the runs that made it."""
  summary = {}
  for row, results in runs.items():
    models = collections.OrderedDict()
    for result in results:
      for entry in result.get("models", []):
        model = models.setdefault(entry["model"], collections.OrderedDict())
        if "error" in entry:
          model.setdefault("_failed", []).append(entry["error"])
          continue
        for plan, values in entry["plans"].items():
          plan_runs = model.setdefault(plan, [])
          plan_runs.append(values)
    rows = {}
    for name, plans in models.items():
      rows[name] = {}
      for plan, values in plans.items():
        if plan == "_failed":
          rows[name]["failed_runs"] = len(values)
          continue
        made = [dict(v) for v in values if "error" not in v]
        for v in made:
          if v.get("requested_speedup"):
            v["speedup_miss"] = (v["measured_speedup"] /
                                 v["requested_speedup"] - 1.0)
        figures = {"runs": len(made), "refused": len(values) - len(made)}
        for key in _FIGURES:
          series = [v[key] for v in made if v.get(key) is not None]
          if series:
            figures[key] = {"median": float(np.median(series)),
                            "min": float(np.min(series)),
                            "max": float(np.max(series)),
                            "values": [float(s) for s in series]}
        asked = [v["requested_speedup"] for v in made
                 if "requested_speedup" in v]
        if asked:
          figures["requested_speedup"] = float(np.median(asked))
        refusals = [v["error"] for v in values if "error" in v]
        if refusals:
          figures["refusal"] = refusals[0]
        rows[name][plan] = figures
    settings = results[0].get("settings", {})
    summary[row] = {
        "runs": len(results),
        "dates": [r.get("date") for r in results],
        "batch_size": settings.get("batch_size"),
        "training": settings.get("training"),
        "round_to": settings.get("round_to"),
        "scores": settings.get("scores"),
        "ratios": settings.get("ratios"),
        "models": rows}
  return summary


def _range(figure, fmt, scale=1.0):
  if not figure:
    return ""
  return (f"{format(scale * figure['median'], fmt)} "
          f"[{format(scale * figure['min'], fmt)}, "
          f"{format(scale * figure['max'], fmt)}]")


def markdown(summary, machine=None):
  lines = ["# Latency budget over repeated runs", "",
           "Medians over runs, with the range [min, max] over runs in "
           "brackets; each run is one `benchmarks/latency_budget.py` "
           "process (its own table, plans and alternated rounds), one run "
           "at a time. Speed-up: dense time / plan time, the inverse of the "
           "median paired ratio of the run's rounds. Error of time/dense: "
           "the plan's predicted fraction of dense against the one measured "
           "in the same rounds. Measured vs asked: measured speed-up / "
           "speed-up asked - 1. `control_` is a second build of the "
           "`latency_` plan: the gap between the two is noise.", ""]
  if machine:
    lines += [f"Machine: {machine}.", ""]
  for row, data in summary.items():
    mode = "training step" if data["training"] else "inference"
    lines += [f"## {row}: {mode}, batch {data['batch_size']}, round_to "
              f"{data['round_to']}, {data['scores']} scores, "
              f"{data['runs']} runs", "",
              "| model | plan | runs | MACs | speed-up asked | predicted | "
              "measured | error of time/dense | absolute error | "
              "measured vs asked |",
              "|---|---|---|---|---|---|---|---|---|---|"]
    for model, plans in data["models"].items():
      for plan, f in plans.items():
        if plan == "failed_runs":
          lines.append(f"| {model} | (failed in {f} runs) ||||||||")
          continue
        if not f["runs"]:
          lines.append(f"| {model} | {plan} | refused in {f['refused']} | "
                       f"{f.get('refusal', '')[:160]} ||||||")
          continue
        asked = f.get("requested_speedup")
        refused = f" (+{f['refused']} refused)" if f["refused"] else ""
        lines.append(
            f"| {model} | {plan} | {f['runs']}{refused} | "
            f"{_range(f.get('macs_fraction'), '.3f')} | "
            f"{'' if asked is None else f'{asked:.2f}x'} | "
            f"{_range(f.get('predicted_speedup'), '.2f')} | "
            f"{_range(f.get('measured_speedup'), '.2f')} | "
            f"{_range(f.get('relative_error'), '+.1f', 100)}% | "
            f"{_range(f.get('prediction_error'), '+.1f', 100)}% | "
            f"{_range(f.get('speedup_miss'), '+.1f', 100)}"
            f"{'%' if f.get('speedup_miss') else ''} |")
    lines.append("")
  return "\n".join(lines)


def main(argv):
  del argv
  runs = load_runs(_RUNS_DIR.value)
  if not runs:
    raise app.UsageError(f"No *_run<k>.json files in {_RUNS_DIR.value}.")
  summary = summarize(runs)
  first = next(iter(runs.values()))[0].get("machine", {})
  machine = (f"{first.get('cpu_model')}, {first.get('usable_cpus')} CPUs"
             if first else None)
  common.write_results(_RUNS_DIR.value, _NAME.value,
                       {"machine": first, "rows": summary},
                       markdown(summary, machine))


if __name__ == "__main__":
  app.run(main)
