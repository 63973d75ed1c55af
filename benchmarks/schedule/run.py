"""EPI's training cost on a schedule like the paper's, against its baselines.

  taskset -c 1 python -m benchmarks.schedule.run        # every seed; resumes
  python -m benchmarks.schedule.run --merge             # JSON, table, plot

One process runs every (seed, policy, ratio) of the config in turn and
appends each finished run to ``<output_dir>/runs/runs_seed<S>.json``
(``runs_seed<S>-<part>.json`` with ``--part``); run again, it skips the
runs the seed's files hold, so it can be stopped and resumed at any point
(a run cut off is run again from its start), and two processes on two
cores can share a seed (``--policies``, ``--ratios``, ``--part``). The model, data,
schedule and recording are `benchmarks.study.run`'s (`Study`); the settings
(`Config` below) make the schedule long enough that the dense phase before
EPI's trigger is the share of the run it is in the paper.
"""

import dataclasses
import glob
import json
import os
import time

from absl import logging
import keras
import numpy as np

from benchmarks import _harness
from benchmarks.study import run as study_lib
import keras_epi

POLICIES = ("dense", "train_prune_finetune", "epi", "epi_macs",
            "epi_latency", "epi_deadline", "epi_macs_deadline", "early_bird",
            "fixed")
_EPI_BUDGETS = {"epi": "neurons", "epi_macs": "macs",
                "epi_latency": "latency", "epi_deadline": "neurons",
                "epi_macs_deadline": "macs"}


@dataclasses.dataclass(frozen=True)
class Config(study_lib.Config):
  seed: int = 0  # (the study's worker flag; --seeds here)
  seeds: tuple = _harness.flag((0, 1, 2), "Seeds to run, in turn.")
  merge: bool = _harness.flag(False, "Gather the run files; train nothing.")
  policies: tuple = _harness.flag(POLICIES, "Policies to run (a part of "
                                  "the study).")
  ratios: tuple = _harness.flag((0.5, 0.7), "Ratios to run.")
  part: str = _harness.flag("", "Names this process's file, runs_seed<S>"
                            "-<part>.json, so that two processes can run "
                            "parts of one seed; each skips the runs of "
                            "every file of the seed.")
  grid: tuple = (0, 3, 6, 10, 15)
  # The *_deadline policies: EPI, or after this many dense epochs if tau is
  # not reached by then (EPICallback's prune_by; not the paper's).
  prune_by: int = 10
  autotune: bool = _harness.flag(False, "tf.data autotuning of the training "
                                 "pipeline (on, a fit waits seconds for its "
                                 "thread after the last epoch).")
  epochs: int = 30
  depth: int = 20
  image_size: int = 28
  train_examples: int = 2048
  validation_examples: int = 1000
  batch_size: int = 128
  learning_rate: float = 0.1
  warmup_epochs: float = 2.0
  weight_decay: float = 5e-4
  finetune_epochs: int = 8
  finetune_learning_rate: float = 0.01
  epi_window: int = 5  # the paper's r
  epi_threshold: float = None  # the paper's tau (0.944 for Taylor)
  latency_round_to: int = 8
  threads: int = _harness.flag(1, "TF intra- and inter-op threads (0: "
                               "TF's).")
  one_iterator: bool = True  # benchmarks/training_cost: an epoch's start
  inference_rounds: int = 9
  data_dir: str = _harness.flag(None, "Fashion-MNIST IDX files (None: "
                                "Debian's package, then "
                                "tensorflow-datasets).")
  output_dir: str = _harness.flag("benchmarks/schedule/results", "Where "
                                  "the run files are (and --merge writes).")
  # Where --merge takes a seed's fixed-epoch grid that this set lacks (the
  # study made with autotuning on: same seeds, examples and steps; only its
  # grid's accuracies are used, not its times).
  grid_from: str = _harness.flag("benchmarks/schedule/results/autotune_on",
                                 "The grid for seeds this set has none of "
                                 "('': none).")
  work_dir: str = "/tmp/keras_epi_schedule"
  quick: bool = _harness.flag(False, "Smoke run: ResNet-8, 256 examples, 4 "
                              "epochs, to a scratch directory.")


QUICK = {"depth": 8, "prune_by": 2, "grid_from": "", "train_examples": 256,
         "validation_examples": 64,
         "epochs": 4, "ratios": (0.5,), "grid": (0, 2), "finetune_epochs": 1,
         "epi_window": 1, "inference_rounds": 2, "batch_size": 64,
         "warmup_epochs": 1.0, "seeds": (0,),
         "output_dir": _harness.scratch("schedule"),
         "work_dir": os.path.join(_harness.scratch("schedule"), "work")}


def run_key(policy, ratio, fixed_epoch=None):
  """What identifies one run of a seed (its record's keys)."""
  return (policy, None if ratio is None else float(ratio), fixed_epoch)


def _key_of(record):
  return run_key(record["policy"], record["prune_ratio"],
                 record.get("fixed_epoch"))


def planned_runs(config):
  """``[(policy, ratio, fixed epoch)]`` of one seed, in the order run: the
  dense run first (train-prune-finetune starts from its weights)."""
  runs = []
  if {"dense", "train_prune_finetune"} & set(config.policies):
    runs.append(run_key("dense", None))
  for ratio in config.ratios:
    for policy in POLICIES[1:]:
      if policy not in config.policies:
        continue
      if policy == "fixed":
        runs += [run_key(policy, ratio, k) for k in config.grid]
      else:
        runs.append(run_key(policy, ratio))
  return runs


def latency_table(config, study):
  """The training-step `LatencyTable` of the study's model at the batch
  size, measured once (read back from `work_dir` on the same machine)."""
  return keras_epi.LatencyTable.measure(
      study.build(), batch_size=config.batch_size, training=True,
      round_to=config.latency_round_to,
      cache_dir=os.path.join(config.work_dir, "latency"))


def latency_ratio(config, study, table, ratio):
  """`ratio`, or the largest the table allows (floored to 0.01) where it
  allows less."""
  reachable = keras_epi.max_latency_ratio(study.build(), table,
                                          round_to=config.latency_round_to)
  return min(ratio, np.floor(100 * reachable) / 100), reachable


def run_one(config, study, key, table, dense_weights):
  """One run: its record (with `wall_seconds`: the model's build, compile
  and fit, everything the training costs)."""
  policy, ratio, k = key
  start = time.perf_counter()
  if policy == "dense":
    final, record = study_lib.run_dense(study)
  elif policy == "train_prune_finetune":
    record = study_lib.run_train_prune_finetune(
        study, dense_weights[0], dense_weights[1], ratio)
  else:
    kwargs = {}
    if policy == "epi_latency":
      kwargs = dict(budget="latency", latency_table=table,
                    round_to=config.latency_round_to)
      ratio_used, reachable = latency_ratio(config, study, table, ratio)
    elif policy in _EPI_BUDGETS:
      kwargs = dict(budget=_EPI_BUDGETS[policy])
      if policy.endswith("_deadline"):
        kwargs["prune_by"] = config.prune_by
    elif policy == "fixed" and k == 0:  # at initialisation: after half an
      kwargs = dict(init_steps=max(1, min(20, study.steps // 2)))  # epoch
    record, final = study_lib.run_epi(
        study, policy, ratio_used if policy == "epi_latency" else ratio,
        prune_epoch=k, **kwargs)
    record["prune_ratio"] = ratio  # the row's ratio (asked)
    if policy == "epi_latency":
      record.update(latency_ratio_used=float(ratio_used),
                    latency_ratio_reachable=float(reachable))
  seconds = time.perf_counter() - start
  record.update(epochs=config.epochs, ratio=record["prune_ratio"])
  cost = record.get("training_cost")
  if cost:  # the callback's own record against the fit's wall time
    record["cost_total_error"] = abs(
        cost["total_seconds"] - record["train_seconds"]) / record[
            "train_seconds"]
  if policy == "train_prune_finetune":
    # The dense run's whole time, then this run's.
    record["wall_seconds"] = dense_weights[1]["wall_seconds"] + (
        record["finetune_seconds"])
  else:
    # Evaluation (accuracy, inference speed) is not training: take it out.
    record["wall_seconds"] = seconds - record.pop("_evaluation_seconds", 0.0)
  return record


class _Recorder:
  """A study's records with the time their evaluation took, so that
  `wall_seconds` is training alone (`Study.record` evaluates)."""

  def __init__(self, study):
    self._record = study.record
    study.record = self

  def __call__(self, *args, **kwargs):
    begin = time.perf_counter()
    record = self._record(*args, **kwargs)
    record["_evaluation_seconds"] = time.perf_counter() - begin
    return record


def worker(config):
  """Every planned run of every seed in `config.seeds` that its seed's
  file does not hold yet, each saved as it finishes."""
  _harness.set_threads(config.threads)
  machine = _harness.machine()
  for seed in config.seeds:
    path, runs, seen, todo = pending_runs(config, seed)
    if not todo:
      continue
    study = study_lib.Study(config, seed)
    _Recorder(study)
    table = (latency_table(config, study) if "epi_latency" in config.policies
             else None)
    dense = None
    for key in todo:
      if key[0] == "train_prune_finetune" and dense is None:
        dense = _dense_for_finetuning(config, study, seen)
      record = run_one(config, study, key, table, dense)
      if key[0] == "dense":
        dense = _dense_for_finetuning(config, study, [record])
      runs.append(dict(record, finished=time.strftime("%Y-%m-%dT%H:%M:%S")))
      seen.append(runs[-1])
      _harness.write_report(path, {
          "config": {k: getattr(config, k)
                     for k in study_lib.RUN_SETTINGS + ("prune_by",)},
          "machine": machine, "runs": runs})
      keras.backend.clear_session()
      logging.info("seed %d: %s done (%d of %d left)", seed, key,
                   len([k for k in todo if k not in
                        {_key_of(r) for r in seen}]), len(todo))


def pending_runs(config, seed):
  """(this process's run file, its records, the records of every file of
  the seed, the planned runs none of them holds)."""
  name = f"runs_seed{seed}" + (f"-{config.part}" if config.part else "")
  path = os.path.join(config.output_dir, "runs", name + ".json")
  runs = _read_runs(path)
  seen = runs + [r for p in _seed_files(config, seed) if p != path
                 for r in _read_runs(p)]  # the seed's other parts
  done = {_key_of(r) for r in seen}
  return path, runs, seen, [k for k in planned_runs(config)
                            if k not in done]


def _seed_files(config, seed):
  """Every run file of `seed`: its own and its parts'."""
  runs = os.path.join(config.output_dir, "runs")
  return sorted(glob.glob(os.path.join(runs, f"runs_seed{seed}.json")) +
                glob.glob(os.path.join(runs, f"runs_seed{seed}-*.json")))


def _read_runs(path):
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)["runs"]


def _dense_for_finetuning(config, study, runs):
  """(the seed's dense model, its record), from the weights `run_dense`
  saved in `work_dir` (by this process or another part's)."""
  record = next(r for r in runs if r["policy"] == "dense")
  model = study.build()
  with np.load(os.path.join(config.work_dir,
                            f"dense_seed{study.seed}.npz")) as f:
    for layer in model.layers:
      weights = [f[f"{layer.name}/{i}"]
                 for i in range(len(layer.get_weights()))]
      if weights:
        layer.set_weights(weights)
  return model, record


# -- the summary --------------------------------------------------------------


def _spread(values):
  values = [v for v in values if v is not None]
  if not values:
    return None
  return {"median": float(np.median(values)), "mean": float(np.mean(values)),
          "std": float(np.std(values)), "min": float(min(values)),
          "max": float(max(values)), "n": len(values)}


def summarize(runs):
  """One row per (policy, ratio[, fixed epoch]): accuracy over seeds (mean
  and spread), whole-run wall time over the same seed's dense run and
  train-prune-finetune run (medians, with min and max), prune epochs."""
  dense = {r["seed"]: r for r in runs if r["policy"] == "dense"}
  tpf = {(r["seed"], r["prune_ratio"]): r for r in runs
         if r["policy"] == "train_prune_finetune"}
  groups = {}
  for r in runs:
    groups.setdefault(_key_of(r), []).append(r)

  def order(key):
    policy, ratio, k = key
    return (ratio or 0, POLICIES.index(policy), k or 0)

  rows = []
  for key in sorted(groups, key=order):
    of = groups[key]
    rows.append({
        "policy": key[0], "ratio": key[1], "fixed_epoch": key[2],
        "seeds": [r["seed"] for r in of],
        "prune_epochs": [r.get("prune_epoch") for r in of],
        "test_accuracy": _spread([r["test_accuracy"] for r in of]),
        "time_vs_dense": _spread([
            r["wall_seconds"] / dense[r["seed"]]["wall_seconds"]
            for r in of if r["seed"] in dense]),
        "time_vs_train_prune_finetune": _spread([
            r["wall_seconds"] / tpf[r["seed"], r["prune_ratio"]][
                "wall_seconds"] for r in of
            if (r["seed"], r["prune_ratio"]) in tpf]),
        "macs_fraction": _spread([r["macs_fraction"] for r in of]),
        "pruned_epoch_vs_dense_epoch": _spread([
            _epoch_ratio(r) for r in of]),
        "dense_epochs_vs_dense": _spread([
            _in_dense_epochs_vs_dense(r, dense.get(r["seed"])) for r in of]),
        "cost_total_error": _spread([r.get("cost_total_error")
                                     for r in of]),
    })
  return rows


def _epoch_ratio(run):
  """The run's median pruned epoch over its median dense epoch, the first
  epoch of each phase (tracing) left out; None without both phases."""
  cost = run.get("training_cost") or {}
  seconds = cost.get("epoch_seconds") or []
  k = cost.get("dense_epochs")
  if not k or k >= len(seconds) or k < 2 or len(seconds) - k < 2:
    return None
  return float(np.median(seconds[k + 1:]) / np.median(seconds[1:k]))


def _dense_epoch(run):
  """The median dense epoch of `run` (the first, tracing, left out), or
  None with fewer than 2 others."""
  seconds = run.get("epoch_seconds") or []
  k = (len(seconds) if run["policy"] == "dense" else
       (run.get("training_cost") or {}).get("dense_epochs") or 0)
  return float(np.median(seconds[1:k])) if k >= 3 else None


def _in_dense_epochs(run, dense=None):
  """`run`'s wall time in its own median dense epochs: a unit measured
  in the same run, so that the host's speed drifting between runs
  cancels (this folder's README: timing on a shared host). A train-prune-finetune
  run counts in its `dense` run's (whose time it includes); None for a
  run with fewer than 3 dense epochs."""
  unit = _dense_epoch(dense if run["policy"] == "train_prune_finetune"
                      else run)
  return None if unit is None else run["wall_seconds"] / unit


def _in_dense_epochs_vs_dense(run, dense):
  """`_in_dense_epochs` of `run` over its seed's `dense` run's (None
  where either has none)."""
  if dense is None:
    return None
  mine, its = _in_dense_epochs(run, dense), _in_dense_epochs(dense)
  return None if mine is None or its is None else mine / its


def grid_choice(runs, grid_runs=()):
  """Per ratio, per seed: the grid epoch with the best test accuracy (the
  oracle's choice) against EPI's epochs and accuracies. A seed whose grid
  `runs` lack takes it from `grid_runs` (another set of the same study:
  same seeds and schedule), named as its `grid_source`."""
  out = {}
  for ratio in sorted({r["prune_ratio"] for r in runs
                       if r["prune_ratio"] is not None}):
    per_seed = {}
    for seed in sorted({r["seed"] for r in runs}):
      for of, source in ((runs, "this set"), (grid_runs, "grid_from")):
        grid = {r["fixed_epoch"]: r["test_accuracy"] for r in of
                if r["policy"] == "fixed" and r["seed"] == seed and
                r["prune_ratio"] == ratio}
        if grid:
          break
      if not grid:
        continue
      best = max(sorted(grid), key=lambda k: grid[k])
      epi = {p: next((r for r in runs if r["policy"] == p and
                      r["seed"] == seed and r["prune_ratio"] == ratio), {})
             for p in _EPI_BUDGETS}
      per_seed[str(seed)] = {
          "grid_best_epoch": best, "grid_best_accuracy": grid[best],
          "grid_source": source,
          **{f"{p}_epoch": r.get("prune_epoch") for p, r in epi.items()},
          **{f"{p}_accuracy": r.get("test_accuracy")
             for p, r in epi.items()}}
    out[str(ratio)] = per_seed
  return out


def markdown(results):
  """The study's report: the table of `summarize`'s rows and the grid's
  choice against EPI's."""
  f = _harness.fmt

  def s(spread, digits=3, scale=1):
    if not spread:
      return "-"
    return (f"{scale * spread['median']:.{digits}f} "
            f"[{scale * spread['min']:.{digits}f}, "
            f"{scale * spread['max']:.{digits}f}]")

  def acc(spread):
    return "-" if not spread else (f"{spread['mean']:.4f} ± "
                                   f"{spread['std']:.4f}")

  c = results["config"]
  rows = [[r["policy"] + (f" @{r['fixed_epoch']}" if r["fixed_epoch"]
                          is not None else ""),
           f(r["ratio"], ".1f"),
           " ".join("-" if e is None else str(e) for e in r["prune_epochs"]),
           acc(r["test_accuracy"]), s(r["time_vs_dense"], 2),
           s(r.get("dense_epochs_vs_dense"), 2),
           s(r["time_vs_train_prune_finetune"], 2),
           s(r["pruned_epoch_vs_dense_epoch"], 2),
           s(r["macs_fraction"], 2)] for r in results["summary"]]
  choice = [[ratio, seed, v["grid_best_epoch"],
             f"{v['grid_best_accuracy']:.4f}", v.get("grid_source", "-"),
             *[f"{f(v.get(f'{p}_epoch'), '')} "
               f"({f(v.get(f'{p}_accuracy'), '.4f')})"
               for p in _EPI_BUDGETS]]
            for ratio, seeds in results["grid_choice"].items()
            for seed, v in seeds.items()]
  return "\n".join([
      "# EPI's training cost on a 30-epoch schedule", "",
      _harness.machine_line(results), "",
      f"ResNet-{c['depth']} on {c['train_examples']} Fashion-MNIST images "
      f"({c['image_size']}x{c['image_size']}), {c['epochs']} epochs (warm-up "
      f"{c['warmup_epochs']:g} + cosine), batch {c['batch_size']}, "
      f"{c['threads'] or 'TF default'} thread(s), tf.data autotuning "
      f"{'on' if c.get('autotune', True) else 'off'}; "
      "setup: benchmarks/schedule/README.md. Accuracy: mean ± std over "
      "seeds; times: median [min, max] over seeds of the run's wall time "
      "over the same seed's dense run (and train-prune-finetune run); "
      "'in own dense epochs': each run's wall time counted in its own "
      "median dense epoch (measured in the same run, so that the host's "
      "speed drifting between runs cancels; runs with fewer than 3 dense "
      "epochs have none), over the dense run's.", "",
      *_harness.table(
          ["policy", "ratio", "prune epoch per seed", "test accuracy",
           "time / dense", "in own dense epochs / dense", "time / TPF",
           "pruned / dense epoch", "MACs"],
          rows), "",
      "The grid's best epoch (test accuracy) against EPI's (its epoch and "
      "accuracy), per seed; `grid_from`: the grid of "
      f"`{results.get('grid_from') or '-'}` (same seeds and schedule):", "",
      *_harness.table(["ratio", "seed", "grid best epoch", "its accuracy",
                       "grid of", *[f"{p} epoch (acc)"
                                    for p in _EPI_BUDGETS]], choice),
  ]) + "\n"


def plot(results, path):
  """Accuracy against training cost, one point per policy and ratio
  (means over seeds, bars: the seeds' spread). The cost is the run's time
  in its own dense epochs over the dense run's (the drift-free unit);
  runs without one (pruned at epoch 0) show their plain wall-time ratio,
  marked "(wall)"."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  ratios = sorted({r["ratio"] for r in results["summary"]
                   if r["ratio"] is not None})
  fig, axes = plt.subplots(1, len(ratios), figsize=(7 * len(ratios), 5),
                           squeeze=False)
  colors = {p: f"C{i}" for i, p in enumerate(POLICIES)}
  for ax, ratio in zip(axes[0], ratios):
    for r in results["summary"]:
      if r["ratio"] not in (ratio, None) or not r["time_vs_dense"]:
        continue
      cost, accuracy = (r.get("dense_epochs_vs_dense") or
                        r["time_vs_dense"]), r["test_accuracy"]
      label = r["policy"] + (f" @{r['fixed_epoch']}"
                             if r["fixed_epoch"] is not None else "") + (
                                 "" if r.get("dense_epochs_vs_dense")
                                 else " (wall)")
      ax.errorbar(cost["median"], accuracy["mean"],
                  xerr=[[cost["median"] - cost["min"]],
                        [cost["max"] - cost["median"]]],
                  yerr=accuracy["std"], fmt="*" if r["policy"].startswith(
                      "epi") else "o", color=colors[r["policy"]],
                  markersize=12 if r["policy"].startswith("epi") else 6,
                  capsize=3, alpha=0.9 if r["fixed_epoch"] is None else 0.5)
      ax.annotate(label, (cost["median"], accuracy["mean"]), fontsize=7,
                  xytext=(4, 4), textcoords="offset points")
    ax.axvline(1.0, color="k", ls=":", lw=0.8)
    ax.set(xlabel="whole-run time in its own dense epochs / dense run's "
           "(same seed)",
           ylabel="test accuracy", title=f"{ratio:.0%} of channels removed")
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def _read_set(output_dir):
  """(runs, settings, machine) of every run file under `output_dir`."""
  runs, settings, machine = [], None, None
  for path in sorted(glob.glob(os.path.join(output_dir, "runs",
                                            "runs_seed*.json"))):
    with open(path) as f:
      part = json.load(f)
    runs += part["runs"]
    settings, machine = settings or part["config"], machine or part["machine"]
  return runs, settings, machine


def merge(config):
  """Gathers the run files into schedule.{json,md,png}."""
  runs, settings, machine = _read_set(config.output_dir)
  if not runs:
    raise FileNotFoundError(f"No run files in {config.output_dir}/runs: "
                            "run the study first.")
  grid_runs = (_read_set(config.grid_from)[0] if config.grid_from else [])
  results = {"date": _harness.now(), "machine": machine,
             "config": dict(settings, threads=config.threads),
             "grid_from": config.grid_from,
             "summary": summarize(runs),
             "grid_choice": grid_choice(runs, grid_runs), "runs": runs}
  path = os.path.join(config.output_dir, "schedule.json")
  _harness.write_report(path, results, markdown(results))
  plot(results, os.path.splitext(path)[0] + ".png")


if __name__ == "__main__":
  _harness.start(Config, lambda c: merge(c) if c.merge else worker(c), QUICK)
