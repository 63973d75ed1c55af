"""The Fashion-MNIST study's row for latency-aware EPI, and where time goes.

  python -m benchmarks.study.latency             # results/, ~19 min
  python -m benchmarks.study.latency --quick     # to a scratch directory
"""

import dataclasses
import math
import os

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from benchmarks.study import run as study_lib
import keras_epi
from keras_epi import timing

_median = _harness.median


@dataclasses.dataclass(frozen=True)
class Config(study_lib.Config):
  seed: int = 0  # the study's worker flags, not flags here
  merge: bool = False
  threads: int = 0
  repeats: int = _harness.flag(4, "Dense/EPI pairs (seed r).")
  ratio: float = _harness.flag(0.5, "Fraction of the predicted training-step "
                               "time to remove.")
  round_to: int = 8
  step_rounds: int = 9


_QUICK = dict(study_lib.QUICK, repeats=1, step_rounds=2,
              output_dir=_harness.scratch("study_latency"))


def _step_speedup(study, pruned):
  """Training steps of `pruned` timed alternately against a fresh dense
  model's (learning rate 0, so every step does the same work)."""
  rng = np.random.default_rng(0)
  batch = study.config.batch_size
  x = tf.constant(rng.normal(size=(batch, *study.shape)).astype("float32"))
  y = tf.constant(rng.integers(0, 10, batch))
  calls = {}
  for name, model in (("dense", study.build()),
                      ("pruned", keras.models.clone_model(pruned))):
    model.compile(keras.optimizers.SGD(learning_rate=0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    calls[name] = lambda m=model: m.train_on_batch(x, y)
  steps = timing.time_alternately(calls, rounds=study.config.step_rounds,
                                  seconds_per_measurement=0.5)
  low, high = steps["ratio_quartiles"]["pruned"]
  return {"step_speedup": 1.0 / steps["ratio"]["pruned"],
          "step_speedup_quartiles": [1.0 / high, 1.0 / low],
          "dense_step_seconds": steps["median_seconds"]["dense"],
          "pruned_step_seconds": steps["median_seconds"]["pruned"]}


def breakdown(run):
  """An EPI run's wall time in dense epochs, pruned epochs (the first one
  beyond a steady one: its tracing) and what falls outside epochs; None
  for a run that did not prune."""
  k, epochs = run.get("prune_epoch"), run["epoch_seconds"]
  if k is None:
    return None
  dense, pruned = epochs[:k], epochs[k:]
  cpu = run.get("epoch_cpu_seconds") or [None] * len(epochs)
  steady = float(np.median(pruned[1:])) if len(pruned) > 1 else None
  return {
      "dense_epochs_seconds": float(sum(dense)),
      "pruned_epochs_seconds": float(sum(pruned)),
      "other_seconds": run["train_seconds"] - float(sum(epochs)),
      "first_pruned_epoch_extra_seconds": (
          None if steady is None else pruned[0] - steady),
      "median_dense_epoch": float(np.median(dense[1:] or dense)),
      "median_pruned_epoch": steady,
      "median_dense_epoch_cpu": _median(cpu[1:k]),
      "median_pruned_epoch_cpu": _median(cpu[k + 1:])}


def summarize(runs, pipeline_seconds):
  """Medians over the dense/EPI pairs of one seed (ratios per pair, with
  [min, max]) and of the EPI runs' `breakdown`."""
  pairs = {}
  for r in runs:
    pairs.setdefault(r["seed"], {})[r["policy"]] = r
  pairs = [(p["dense"], p["epi_latency"]) for p in pairs.values()
           if {"dense", "epi_latency"} <= set(p)]
  ratios = [e["train_seconds"] / d["train_seconds"] for d, e in pairs]
  drops = [d["test_accuracy"] - e["test_accuracy"] for d, e in pairs]
  epi = [r for r in runs if r["policy"] == "epi_latency"]
  dense = [r for r in runs if r["policy"] == "dense"]
  parts = [b for b in map(breakdown, epi) if b]
  dense_epoch = _median([np.median(r["epoch_seconds"][1:]) for r in dense])

  def over(key, values=parts):
    return _median([p[key] for p in values])

  return {
      "pairs": len(ratios), "wall_ratio_median": _median(ratios),
      "wall_ratio_range": ratios and [min(ratios), max(ratios)] or None,
      "accuracy_drop_median": _median(drops),
      "accuracy_drop_range": drops and [min(drops), max(drops)] or None,
      "dense_accuracy_mean": float(np.mean([r["test_accuracy"]
                                            for r in dense])),
      "epi_accuracy_mean": float(np.mean([r["test_accuracy"] for r in epi])),
      "prune_epochs": [r.get("prune_epoch") for r in epi],
      "macs_fraction_median": over("macs_fraction", epi),
      "step_speedup_median": _median([r.get("step_speedup") for r in epi]),
      "predicted_step_speedup_median": _median([
          1.0 / r["predicted_step_fraction"] for r in epi
          if r.get("predicted_step_fraction")]),
      "dense_epoch_median": dense_epoch,
      "pruned_epoch_median": over("median_pruned_epoch"),
      "dense_epoch_cpu_median": _median([
          _median((r.get("epoch_cpu_seconds") or [None])[1:]) for r in dense]),
      "pruned_epoch_cpu_median": over("median_pruned_epoch_cpu"),
      "other_seconds_median": over("other_seconds"),
      "first_pruned_epoch_extra_median": over(
          "first_pruned_epoch_extra_seconds"),
      "dense_other_seconds_median": _median([
          r["train_seconds"] - sum(r["epoch_seconds"]) for r in dense]),
      "pipeline_epoch_seconds": pipeline_seconds,
      "pipeline_share_of_dense_epoch": (
          None if not dense_epoch else pipeline_seconds / dense_epoch)}


def markdown(results):
  """The report of `results` (as written by `main`)."""
  s, c, table = results["summary"], results["settings"], results["table"]
  f = _harness.fmt

  def spread(median, values, scale=1, digits=3):
    return (f"{f(median and scale * median, f'.{digits}f')} "
            f"{values and [round(scale * v, digits) for v in values]}")

  return "\n".join([
      "# Fashion-MNIST study: latency-aware EPI", "",
      f"{_harness.machine_line(results)} EPI with budget='latency' at ratio "
      f"{c['ratio']} of the predicted training-step time (asked: "
      f"{c.get('ratio_asked', c['ratio'])}, the table allows at most "
      f"{f(c.get('reachable_ratio'), '.4f')}); {s['pairs']} dense/EPI pairs. "
      "Setup: benchmarks/study/README.md.", "",
      f"Training-step table: measured in {table['measure_seconds']:.1f} s, "
      f"scale {table['scale']:.3f}, fixed {1000 * table['fixed']:.1f} ms, "
      f"dense step {1000 * table['whole_seconds']:.1f} ms.", "",
      *_harness.table(["", "value"], [
          ["wall time, EPI / dense",
           spread(s["wall_ratio_median"], s["wall_ratio_range"])],
          ["test accuracy, dense / EPI (means)",
           f"{s['dense_accuracy_mean']:.4f} / {s['epi_accuracy_mean']:.4f}"],
          ["accuracy loss, pt (median per pair)",
           spread(s["accuracy_drop_median"], s["accuracy_drop_range"], 100,
                  2)],
          ["prune epochs", s["prune_epochs"]],
          ["MACs of the pruned model", f(s["macs_fraction_median"], ".3f")],
          *[[label, " / ".join(f(s[k], ".2f", unit=unit) for k in keys)]
            for label, keys, unit in (
                ("training step speed-up, predicted / measured",
                 ("predicted_step_speedup_median", "step_speedup_median"),
                 "x"),
                ("epoch, dense / pruned (median, s)",
                 ("dense_epoch_median", "pruned_epoch_median"), ""),
                ("CPU seconds of an epoch, dense / pruned (median, both "
                 "cores)", ("dense_epoch_cpu_median",
                            "pruned_epoch_cpu_median"), ""),
                ("outside epochs, dense run / EPI run (s)",
                 ("dense_other_seconds_median", "other_seconds_median"), ""),
                ("first pruned epoch beyond a steady one (s)",
                 ("first_pruned_epoch_extra_median",), ""))],
          ["input pipeline alone, one epoch (s; share of a dense epoch)",
           f"{f(s['pipeline_epoch_seconds'], '.2f')} "
           f"({f(s['pipeline_share_of_dense_epoch'], '.2f')})"]]), "",
      *_harness.table(
          ["seed", "policy", "wall s", "prune epoch", "test acc", "MACs",
           "step speed-up", "epoch seconds"],
          [[r["seed"], r["policy"], f"{r['train_seconds']:.1f}",
            f(r.get("prune_epoch"), ""), f"{r['test_accuracy']:.4f}",
            f"{r['macs_fraction']:.3f}", f(r.get("step_speedup"), ".2f"),
            " ".join(f"{e:.1f}" for e in r["epoch_seconds"])]
           for r in results["runs"]])]) + "\n"


def main(config):
  study = study_lib.Study(config, 0)
  model = study.build()
  table = keras_epi.LatencyTable.measure(
      model, batch_size=config.batch_size, training=True,
      round_to=config.round_to)
  os.makedirs(config.output_dir, exist_ok=True)
  table.save(os.path.join(config.output_dir,
                          "fashion_mnist_latency_table.json"))
  reachable = keras_epi.max_latency_ratio(model, table,
                                          round_to=config.round_to)
  ratio = config.ratio
  if ratio > reachable:  # run at the largest ratio the table allows
    ratio = math.floor(100 * reachable) / 100
    logging.warning("--ratio=%s cannot be met: at most %.4f of the step can "
                    "be removed. Running at %s.", config.ratio, reachable,
                    ratio)

  def read_epoch():  # the input pipeline alone
    for _ in study.train():
      pass

  pipeline = timing.measure(read_epoch, 3, "median")
  settings = dict(dataclasses.asdict(config), ratio=ratio,
                  ratio_asked=config.ratio, reachable_ratio=reachable)
  runs = []
  for seed in range(config.repeats):
    order = [None, table] if seed % 2 == 0 else [table, None]
    for t in order:  # one dense (no table) and one EPI run, alternating
      study = study_lib.Study(config, seed)
      if t is None:
        final, record = study_lib.run_dense(study)
      else:
        record, final = study_lib.run_epi(
            study, "epi_latency", ratio, budget="latency", latency_table=t,
            round_to=config.round_to)
        fresh, widths = study.build(), record["widths_final"]
        keep = widths and {k: np.arange(w) for k, w in widths.items()}
        record["predicted_step_fraction"] = keep and (
            t.predict(fresh, keep) / t.predict(fresh))
        if record["prune_epoch"] is not None:
          record.update(_step_speedup(study, final))
      runs.append(dict(record, order=order.index(t)))
      keras.backend.clear_session()
    results = {  # written after every pair: a cut-off run keeps its pairs
        "date": _harness.now(), "machine": _harness.machine(),
        "settings": settings, "runs": runs,
        "summary": summarize(runs, pipeline),
        "table": dict({k: table.metadata[k] for k in (
            "measure_seconds", "whole_seconds", "calibration")},
                      scale=table.scale, fixed=table.fixed)}
    _harness.write_report(
        os.path.join(config.output_dir, "fashion_mnist_latency.json"),
        results, markdown(results))


if __name__ == "__main__":
  _harness.start(Config, main, _QUICK)
