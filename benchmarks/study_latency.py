r"""The Fashion-MNIST study's row for latency-aware EPI, and where time goes.

Same model, data and schedule as `benchmarks/study.py` (its flags apply:
ResNet-20 on 14x14 Fashion-MNIST, 8000 examples, 12 epochs, batch 128).
Once, on the fresh model: a ``training=True`` `keras_epi.LatencyTable` at
the batch size (timed; saved beside the results), and the time to read one
epoch of the input pipeline alone. Then, for each repeat (seed r), one
dense run and one run of EPI with ``budget="latency"`` at ``--ratio`` of the
predicted training-step time (0.5 asks for 2x; where the table says that
cannot be met, the largest ratio it allows, floored to 0.01, with a
warning and both recorded), one after the other in
this process and in alternating order, never beside another run. Each run
records its wall time, every epoch's time, the prune epoch, the test
accuracy; the pruned model's training step is then timed against the dense
model's, alternately (`benchmarks.harness`), to see the speed-up the plan
delivered. The summary gives medians over repeats of the paired wall-time
ratios with their spread, and splits the EPI run's wall time into dense
epochs, pruned epochs, and the rest (the cut, compiling the pruned model,
the first pruned epoch's tracing beyond a steady epoch).

  python -m benchmarks.study_latency --repeats=3

Writes ``fashion_mnist_latency.json`` and ``.md`` (and the table as
``fashion_mnist_latency_table.json``) into --output_dir.
"""

import json
import math
import os
import time

from absl import app
from absl import flags
from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import common
from benchmarks import harness
from benchmarks import study as study_lib
import keras_epi

_REPEATS = flags.DEFINE_integer("repeats", 3, "Dense/EPI pairs (seed r).")
_RATIO = flags.DEFINE_float(
    "ratio", 0.5, "Fraction of the predicted training-step time to remove.")
_ROUND_TO = flags.DEFINE_integer("round_to", 8, "Kept widths' multiple.")
_RESULTS_DIR = flags.DEFINE_string("results_dir", "benchmarks/results",
                                   "Where the results are written.")
_STEP_ROUNDS = flags.DEFINE_integer(
    "step_rounds", 9, "Alternated rounds timing dense vs pruned steps.")


def _fit(study, seed, table=None, ratio=None):
  """One run: dense (table None) or latency-aware EPI. Returns its record."""
  keras.utils.set_random_seed(seed)
  model = study_lib.compile_model(study.build(), study.schedule())
  timer = common.epoch_timer(keras.callbacks.Callback)
  callbacks = [timer]
  epi = None
  if table is not None:
    epi = keras_epi.EPICallback(
        prune_ratio=ratio, criterion="taylor", policy="epi",
        window=study_lib.config()["epi_window"],
        threshold=study_lib.config()["epi_threshold"],
        budget="latency", latency_table=table, round_to=_ROUND_TO.value)
    callbacks.insert(0, epi)
  epochs = study_lib.config()["epochs"]
  start = time.perf_counter()
  if epi is None:
    model.fit(study.train(), epochs=epochs, callbacks=callbacks, verbose=0)
    final = model
  else:
    final, _ = keras_epi.fit(model, study.train(), epochs=epochs,
                             callbacks=callbacks, verbose=0)
  seconds = time.perf_counter() - start
  test = final.evaluate(study.test, verbose=0, return_dict=True)
  record = {
      "policy": "dense" if epi is None else "epi_latency", "seed": seed,
      "train_seconds": seconds, "epoch_seconds": timer.seconds,
      "epoch_cpu_seconds": timer.cpu_seconds,
      "test_accuracy": float(test["accuracy"]),
      "macs_fraction": keras_epi.count_macs(final) / study.macs_dense,
      "params_final": final.count_params(),
  }
  if epi is not None:
    record.update(
        prune_epoch=epi.prune_epoch, prune_reason=epi.prune_reason,
        epi=epi.epi_history,
        widths_final=(None if epi.keep is None else
                      {k: len(v) for k, v in epi.keep.items()}),
        predicted_step_fraction=(
            None if epi.keep is None else
            table.predict(study.build(), epi.keep) /
            table.predict(study.build())))
  logging.info("%s seed %d: %.1f s, test %.4f, MACs %.3f, pruned after %s",
               record["policy"], seed, seconds, record["test_accuracy"],
               record["macs_fraction"], record.get("prune_epoch"))
  return record, final


def _step_speedup(study, pruned):
  """Paired training-step time of `pruned` over a fresh dense model."""
  rng = np.random.default_rng(0)
  batch = study_lib.config()["batch_size"]
  x = tf.constant(rng.normal(size=(batch, *study.shape)).astype("float32"))
  y = tf.constant(rng.integers(0, 10, batch))
  calls = {}
  for name, model in (("dense", study.build()),
                      ("pruned", keras.models.clone_model(pruned))):
    model.compile(keras.optimizers.SGD(learning_rate=0.0),
                  keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    calls[name] = lambda m=model: m.train_on_batch(x, y)
  timing = harness.time_alternately(calls, rounds=_STEP_ROUNDS.value,
                                    seconds_per_measurement=0.5)
  low, high = timing["ratio_quartiles"]["pruned"]
  return {"step_speedup": 1.0 / timing["ratio"]["pruned"],
          "step_speedup_quartiles": [1.0 / high, 1.0 / low],
          "dense_step_seconds": timing["median_seconds"]["dense"],
          "pruned_step_seconds": timing["median_seconds"]["pruned"]}


def _pipeline_seconds(study, passes=3):
  """Median seconds to read one epoch of the training pipeline alone."""
  times = []
  for _ in range(passes):
    start = time.perf_counter()
    for _ in study.train():
      pass
    times.append(time.perf_counter() - start)
  return float(np.median(times))


def _breakdown(run):
  """The EPI run's wall time in dense epochs, pruned epochs and the rest."""
  k = run.get("prune_epoch")
  epochs = run["epoch_seconds"]
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
      "median_pruned_epoch_cpu": _median(cpu[k + 1:]),
  }


def _median(values):
  values = [v for v in values if v is not None]
  return float(np.median(values)) if values else None


def summarize(runs, pipeline_seconds):
  pairs = {}
  for r in runs:
    pairs.setdefault(r["seed"], {})[r["policy"]] = r
  ratios, drops = [], []
  for pair in pairs.values():
    if {"dense", "epi_latency"} <= set(pair):
      ratios.append(pair["epi_latency"]["train_seconds"] /
                    pair["dense"]["train_seconds"])
      drops.append(pair["dense"]["test_accuracy"] -
                   pair["epi_latency"]["test_accuracy"])
  epi = [r for r in runs if r["policy"] == "epi_latency"]
  dense = [r for r in runs if r["policy"] == "dense"]
  parts = [b for b in (_breakdown(r) for r in epi) if b]

  med = _median
  def spread(values):
    return [float(min(values)), float(max(values))] if values else None
  dense_epoch = med([float(np.median(r["epoch_seconds"][1:])) for r in dense])
  return {
      "pairs": len(ratios),
      "wall_ratio_median": med(ratios), "wall_ratio_range": spread(ratios),
      "accuracy_drop_median": med(drops), "accuracy_drop_range": spread(drops),
      "dense_accuracy_mean": float(np.mean([r["test_accuracy"]
                                            for r in dense])),
      "epi_accuracy_mean": float(np.mean([r["test_accuracy"] for r in epi])),
      "prune_epochs": [r.get("prune_epoch") for r in epi],
      "macs_fraction_median": med([r["macs_fraction"] for r in epi]),
      "step_speedup_median": med([r.get("step_speedup") for r in epi]),
      "predicted_step_speedup_median": med([
          1.0 / r["predicted_step_fraction"] for r in epi
          if r.get("predicted_step_fraction")]),
      "dense_epoch_median": dense_epoch,
      "pruned_epoch_median": med([p["median_pruned_epoch"] for p in parts]),
      "dense_epoch_cpu_median": med([
          _median((r.get("epoch_cpu_seconds") or [None])[1:]) for r in dense]),
      "pruned_epoch_cpu_median": med([p["median_pruned_epoch_cpu"]
                                      for p in parts]),
      "other_seconds_median": med([p["other_seconds"] for p in parts]),
      "first_pruned_epoch_extra_median": med([
          p["first_pruned_epoch_extra_seconds"] for p in parts]),
      "dense_other_seconds_median": med([
          r["train_seconds"] - sum(r["epoch_seconds"]) for r in dense]),
      "pipeline_epoch_seconds": pipeline_seconds,
      "pipeline_share_of_dense_epoch": (
          None if not dense_epoch else pipeline_seconds / dense_epoch),
  }


def _f(value, spec):
  return "-" if value is None else format(value, spec)


def markdown(results):
  s, cfg = results["summary"], results["settings"]
  table = results["table"]
  lines = [
      "# Fashion-MNIST study: latency-aware EPI (generated by "
      "benchmarks/study_latency.py)", "",
      f"{results['date']}, {results['machine'].get('cpu_model')}, "
      f"{results['machine']['usable_cpus']} CPUs, TensorFlow backend. "
      f"ResNet-20, {cfg['image_size']}x{cfg['image_size']} images, "
      f"{cfg['train_examples']} training examples, {cfg['epochs']} epochs, "
      f"batch {cfg['batch_size']}. EPI (Taylor, window "
      f"{cfg['epi_window']}) with budget='latency' at ratio {cfg['ratio']} of "
      f"the predicted training-step time (round_to={cfg['round_to']}; "
      f"asked: {cfg.get('ratio_asked', cfg['ratio'])}, the table allows at "
      f"most {_f(cfg.get('reachable_ratio'), '.4f')}). "
      f"{s['pairs']} dense/EPI pairs (seed r each), one run at a time, in "
      "alternating order; ratios are per pair, then the median [min, max].",
      "",
      f"Training-step table: measured in {table['measure_seconds']:.1f} s "
      f"(once; not in the runs' wall time), scale {table['scale']:.3f}, "
      f"fixed {1000 * table['fixed']:.1f} ms, dense step "
      f"{1000 * table['whole_seconds']:.1f} ms.", "",
      "| | value |", "|---|---|",
      f"| wall time, EPI / dense | {_f(s['wall_ratio_median'], '.3f')} "
      f"{s['wall_ratio_range'] and [round(v, 3) for v in s['wall_ratio_range']]}"
      " |",
      f"| test accuracy, dense / EPI (means) | "
      f"{s['dense_accuracy_mean']:.4f} / {s['epi_accuracy_mean']:.4f} |",
      f"| accuracy loss, pt (median per pair) | "
      f"{_f(100 * s['accuracy_drop_median'], '.2f')} "
      f"{s['accuracy_drop_range'] and [round(100 * v, 2) for v in s['accuracy_drop_range']]}"
      " |",
      f"| prune epochs | {s['prune_epochs']} |",
      f"| MACs of the pruned model | {_f(s['macs_fraction_median'], '.3f')} |",
      f"| training step speed-up, predicted / measured | "
      f"{_f(s['predicted_step_speedup_median'], '.2f')}x / "
      f"{_f(s['step_speedup_median'], '.2f')}x |",
      f"| epoch, dense / pruned (median, s) | "
      f"{_f(s['dense_epoch_median'], '.2f')} / "
      f"{_f(s['pruned_epoch_median'], '.2f')} |",
      f"| CPU seconds of an epoch, dense / pruned (median, both cores) | "
      f"{_f(s['dense_epoch_cpu_median'], '.2f')} / "
      f"{_f(s['pruned_epoch_cpu_median'], '.2f')} |",
      f"| outside epochs, dense run / EPI run (s) | "
      f"{_f(s['dense_other_seconds_median'], '.2f')} / "
      f"{_f(s['other_seconds_median'], '.2f')} |",
      f"| first pruned epoch beyond a steady one (s) | "
      f"{_f(s['first_pruned_epoch_extra_median'], '.2f')} |",
      f"| input pipeline alone, one epoch (s; share of a dense epoch) | "
      f"{_f(s['pipeline_epoch_seconds'], '.2f')} "
      f"({_f(s['pipeline_share_of_dense_epoch'], '.2f')}) |", "",
      "| seed | policy | wall s | prune epoch | test acc | MACs | step "
      "speed-up | epoch seconds |", "|---|---|---|---|---|---|---|---|"]
  for r in results["runs"]:
    lines.append(
        f"| {r['seed']} | {r['policy']} | {r['train_seconds']:.1f} | "
        f"{r.get('prune_epoch', '-')} | {r['test_accuracy']:.4f} | "
        f"{r['macs_fraction']:.3f} | {_f(r.get('step_speedup'), '.2f')} | "
        f"{' '.join(f'{e:.1f}' for e in r['epoch_seconds'])} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  study = study_lib.Study(0)
  model = study.build()
  table = keras_epi.LatencyTable.measure(
      model, batch_size=study_lib.config()["batch_size"], training=True,
      round_to=_ROUND_TO.value)
  logging.info("Table: %r in %.1f s", table, table.metadata["measure_seconds"])
  os.makedirs(_RESULTS_DIR.value, exist_ok=True)
  table.save(os.path.join(_RESULTS_DIR.value,
                          "fashion_mnist_latency_table.json"))
  reachable = keras_epi.max_latency_ratio(model, table,
                                          round_to=_ROUND_TO.value)
  ratio = _RATIO.value
  if ratio > reachable:
    ratio = math.floor(100 * reachable) / 100
    logging.warning("--ratio=%s cannot be met: the table says at most %.4f "
                    "of the training step can be removed (every group but "
                    "the stem at round_to channels). Running at %s.",
                    _RATIO.value, reachable, ratio)
  pipeline = _pipeline_seconds(study)
  config = dict(study_lib.config(), ratio=ratio, ratio_asked=_RATIO.value,
                reachable_ratio=reachable,
                round_to=_ROUND_TO.value, repeats=_REPEATS.value,
                threads="TensorFlow default")
  runs = []
  results = {}
  for seed in range(_REPEATS.value):
    order = [None, table] if seed % 2 == 0 else [table, None]
    for t in order:
      study = study_lib.Study(seed)
      record, final = _fit(study, seed, t, ratio)
      if t is not None and record["prune_epoch"] is not None:
        record.update(_step_speedup(study, final))
      record["order"] = order.index(t)
      runs.append(record)
      keras.backend.clear_session()
    results = harness.record(**config)
    results.update(
        runs=runs, summary=summarize(runs, pipeline),
        table={"measure_seconds": table.metadata["measure_seconds"],
               "scale": table.scale, "fixed": table.fixed,
               "whole_seconds": table.metadata["whole_seconds"],
               "calibration": table.metadata["calibration"]})
    # Written after every pair, so a cut-off run keeps what it finished.
    common.write_results(_RESULTS_DIR.value, "fashion_mnist_latency",
                         results, markdown(results))
  print(json.dumps(results["summary"], indent=1))


if __name__ == "__main__":
  app.run(main)
