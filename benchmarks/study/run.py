"""The Fashion-MNIST study: when to prune, EPI against its baselines.

  python -m benchmarks.study.run --seed=0 --threads=1 &   # a worker a seed
  python -m benchmarks.study.run --seed=1 --threads=1 &
  wait
  TF_USE_LEGACY_KERAS=1 python -m benchmarks.study.tfmot_peer --seeds=0,1
  python -m benchmarks.study.run --merge                  # JSON, table, plot

A worker appends each finished run to ``<output_dir>/runs/runs_seed<S>.json``;
--merge gathers those and the peer's ``tfmot_seed<S>.json``.
"""

import dataclasses
import glob
import json
import math
import os
import time

from absl import logging
import keras
import numpy as np
import tensorflow as tf

from benchmarks import _harness
from examples import data as data_lib
from examples import models as models_lib
import keras_epi
from keras_epi import timing

POLICIES = ("dense", "train_prune_finetune", "epi", "early_bird", "fixed",
            "epi_validation_tau")
_PRUNING = ("epi", "early_bird", "fixed", "epi_validation_tau")
# The settings a run file records (its "config"), which tfmot_peer reads.
RUN_SETTINGS = ("epochs", "depth", "image_size", "train_examples",
                "validation_examples", "batch_size", "learning_rate",
                "warmup_epochs", "weight_decay", "finetune_epochs",
                "finetune_learning_rate", "epi_window", "epi_threshold",
                "grid", "ratios", "threads", "one_iterator", "autotune")
_flag = _harness.flag


@dataclasses.dataclass(frozen=True)
class Config:
  seed: int = _flag(0, "Seed of this worker's runs.")
  merge: bool = _flag(False, "Gather the workers' files; train nothing.")
  policies: tuple = POLICIES
  ratios: tuple = (0.3, 0.5)
  grid: tuple = (0, 2, 4, 6, 8)
  epochs: int = 12
  depth: int = 20
  image_size: int = 14
  train_examples: int = 8000
  validation_examples: int = 1000
  batch_size: int = 128
  learning_rate: float = 0.1
  warmup_epochs: float = 1.0
  weight_decay: float = 5e-4
  finetune_epochs: int = 3
  finetune_learning_rate: float = 0.01
  epi_window: int = 3  # the paper's 5 could not fire before epoch 6 of 12
  epi_threshold: float = None  # None: the paper's tau for the criterion
  threads: int = _flag(0, "TF intra- and inter-op threads (0: TF's).")
  # One input iterator for a whole fit (the pipeline repeated,
  # steps_per_epoch given), not a new one every epoch: see
  # benchmarks/training_cost/README.md (the start of an epoch).
  one_iterator: bool = False
  autotune: bool = True  # of the training pipeline (data.pipeline's)
  inference_rounds: int = 9
  data_dir: str = _flag(None, "Fashion-MNIST IDX files (None: Debian's "
                        "package, then tensorflow-datasets).")
  output_dir: str = "benchmarks/study/results"
  work_dir: str = "/tmp/keras_epi_study"
  quick: bool = _flag(False, "Smoke run: ResNet-8, 512 examples, 3 epochs, "
                      "to a scratch directory.")

QUICK = {"depth": 8, "train_examples": 512, "validation_examples": 128,
         "epochs": 3, "ratios": (0.5,), "grid": (1, 2), "finetune_epochs": 1,
         "epi_window": 1, "inference_rounds": 3, "batch_size": 64,
         "output_dir": _harness.scratch("study"),
         "work_dir": os.path.join(_harness.scratch("study"), "work")}


class Study:
  """The data, model builder and evaluation shared by one seed's runs (the
  split is seed 0's for every seed)."""

  def __init__(self, config, seed):
    self.config, self.seed = config, seed
    self.dataset = data_lib.load("fashion_mnist", config.data_dir,
                                 config.train_examples,
                                 config.validation_examples, seed=0)
    size = config.image_size
    self.shape = (size, size, self.dataset.image_shape[-1])
    self._norm = dict(mean=self.dataset.mean, std=self.dataset.std,
                      image_size=size)
    self.validation, self.test = (
        data_lib.pipeline(d, 500, False, **self._norm)
        for d in (self.dataset.validation, self.dataset.test))
    self.steps = self.dataset.num_train // config.batch_size
    self.sample = next(iter(self.test.unbatch().batch(512)))[0]
    self.macs_dense = keras_epi.count_macs(self.build())

  def train(self):
    """A fresh training pipeline (this seed's example order)."""
    return data_lib.pipeline(self.dataset.train, self.config.batch_size, True,
                             augment=True, seed=self.seed,
                             autotune=self.config.autotune, **self._norm)

  def build(self, keras_module=keras):
    return models_lib.resnet_cifar(
        self.config.depth, self.shape, self.dataset.num_classes,
        weight_decay=self.config.weight_decay, keras_module=keras_module)

  def fit(self, epi=None, epochs=None, schedule=None, weights=None):
    """A fresh model (of `weights`) trained with `epi` through keras_epi.fit
    (None: model.fit): (final model, seconds, epoch timer)."""
    keras.utils.set_random_seed(self.seed)
    model = self.build()
    if weights is not None:
      model.set_weights(weights)
    c = self.config
    model.compile(
        optimizer=keras.optimizers.SGD(
            schedule or models_lib.warmup_cosine(
                c.learning_rate, c.epochs, self.steps, c.warmup_epochs),
            momentum=0.9, nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    timer, start = _harness.epoch_timer(), time.perf_counter()
    kwargs = dict(epochs=epochs or c.epochs, verbose=0,
                  callbacks=[timer] if epi is None else [epi, timer])
    data = self.train()
    if c.one_iterator:
      data, kwargs["steps_per_epoch"] = data.repeat(), self.steps
    if epi is None:
      model.fit(data, **kwargs)
    else:
      model, _ = keras_epi.fit(model, data, **kwargs)
    return model, time.perf_counter() - start, timer

  def record(self, policy, ratio, model, seconds, timer, epi=None, **extra):
    """One run's record: accuracy, time, size, speed, EPI's history."""
    test, validation = (model.evaluate(d, verbose=0, return_dict=True)
                        for d in (self.test, self.validation))
    forward = tf.function(lambda x: model(x, training=False))
    speed = timing.time_alternately(
        {"final": lambda: forward(self.sample)}, rounds=7, warmup=1,
        num_calls=1)
    macs = keras_epi.count_macs(model)
    result = dict(
        policy=policy, prune_ratio=ratio, seed=self.seed,
        prune_epoch=None if epi is None else epi.prune_epoch,
        test_accuracy=float(test["accuracy"]),
        validation_accuracy=float(validation["accuracy"]),
        train_seconds=seconds, epoch_seconds=timer.seconds,
        epoch_cpu_seconds=timer.cpu_seconds, macs_dense=self.macs_dense,
        macs_final=macs, macs_fraction=macs / self.macs_dense,
        params_final=model.count_params(),
        throughput=len(self.sample) / speed["median_seconds"]["final"],
        epi=None if epi is None else epi.epi_history,
        epi_threshold=None if epi is None else epi.threshold,
        widths_final=(None if epi is None or epi.keep is None else
                      {k: len(v) for k, v in epi.keep.items()}), **extra)
    logging.info("%s ratio=%s seed=%d: test %.4f, %.0f s, pruned after %s "
                 "epochs", policy, ratio, self.seed, result["test_accuracy"],
                 seconds, result["prune_epoch"])
    return result


def run_dense(study):
  model, seconds, timer = study.fit()
  os.makedirs(study.config.work_dir, exist_ok=True)
  np.savez(os.path.join(study.config.work_dir, f"dense_seed{study.seed}.npz"),
           **{f"{layer.name}/{i}": w for layer in model.layers
              for i, w in enumerate(layer.get_weights())})
  return model, study.record("dense", None, model, seconds, timer)


def run_epi(study, policy, ratio, prune_epoch=None, threshold=None,
            **callback_kwargs):
  """One run of EPICallback under `policy` (epi_validation_tau and
  epi_latency are EPI's): (record, final model)."""
  epi = keras_epi.EPICallback(
      prune_ratio=ratio, criterion="taylor",
      policy="epi" if policy.startswith("epi") else policy,
      window=study.config.epi_window,
      threshold=threshold if threshold is not None else
      study.config.epi_threshold, prune_epoch=prune_epoch, **callback_kwargs)
  final, seconds, timer = study.fit(epi)
  extra = {"fixed_epoch": prune_epoch} if policy == "fixed" else {}
  if policy == "epi_validation_tau":
    extra["threshold_source"] = "validation split of seed 0's grid"
  if policy == "early_bird":
    extra["eb_distance"] = epi.early_bird_history
  return study.record(policy, ratio, final, seconds, timer, epi,
                      prune_reason=epi.prune_reason,
                      training_cost=epi.training_cost, **extra), final


def run_train_prune_finetune(study, dense_model, dense_record, ratio):
  """Scores the trained dense model for one epoch, cuts, fine-tunes; its
  times include the dense run's."""
  epochs = 1 + study.config.finetune_epochs
  epi = keras_epi.EPICallback(prune_ratio=ratio, criterion="taylor",
                              policy="fixed", prune_epoch=1)
  final, seconds, timer = study.fit(
      epi, epochs, models_lib.warmup_cosine(
          study.config.finetune_learning_rate, epochs, study.steps, 0),
      dense_model.get_weights())
  record = study.record("train_prune_finetune", ratio, final,
                        dense_record["train_seconds"] + seconds, timer, epi,
                        finetune_seconds=seconds)
  for key in ("epoch_seconds", "epoch_cpu_seconds"):
    record[key] = dense_record[key] + record[key]
  return dict(record, prune_epoch=study.config.epochs + 1)


def worker(config):
  """Every policy of `config.policies` for `config.seed`, each run saved."""
  _harness.set_threads(config.threads)
  study = Study(config, config.seed)
  path = os.path.join(config.output_dir, "runs",
                      f"runs_seed{config.seed}.json")
  runs, machine = [], _harness.machine()

  def save(record):
    runs.append(dict(record, finished=time.strftime("%Y-%m-%dT%H:%M:%S")))
    _harness.write_report(path, {
        "config": {k: getattr(config, k) for k in RUN_SETTINGS},
        "machine": machine, "runs": runs})

  policies = config.policies
  if "dense" in policies or "train_prune_finetune" in policies:
    dense_model, dense_record = run_dense(study)
    save(dense_record)
    for ratio in config.ratios if "train_prune_finetune" in policies else ():
      save(run_train_prune_finetune(study, dense_model, dense_record, ratio))
  for ratio in config.ratios:
    for policy in ("epi", "early_bird"):
      if policy in policies:
        save(run_epi(study, policy, ratio)[0])
  for k in sorted(config.grid) if "fixed" in policies else ():
    for ratio in config.ratios:
      save(run_epi(study, "fixed", ratio, prune_epoch=k)[0])
  if "epi_validation_tau" in policies:
    chosen = wait_for_threshold(config)
    for ratio in config.ratios:
      save(run_epi(study, "epi_validation_tau", ratio,
                   threshold=chosen[str(ratio)]["threshold"])[0])


def wait_for_threshold(config, poll_seconds=30, max_hours=3):
  """Waits for seed 0's grid, then returns `choose_threshold` of it."""
  path = os.path.join(config.output_dir, "runs", "runs_seed0.json")
  for _ in range(int(max_hours * 3600 / poll_seconds)):
    if os.path.exists(path):
      with open(path) as f:
        runs = json.load(f)["runs"]
      done = {(r["prune_ratio"], r.get("fixed_epoch")) for r in runs
              if r["policy"] == "fixed"}
      if all((ratio, k) in done for ratio in config.ratios
             for k in config.grid):
        return choose_threshold(runs)
    time.sleep(poll_seconds)
  raise RuntimeError(f"Seed 0's grid did not appear in {path}.")


def _defined(value):
  return value is not None and not math.isnan(value)


def choose_threshold(runs, seed=0):
  """tau from the validation split, per ratio: the grid epoch k* with the
  best validation accuracy (seed `seed`'s runs), and the EPI value of that
  seed's dense phase at the end of epoch k* (read off the fixed run with the
  longest dense phase). Where EPI is not defined at k* (None or NaN: k* <=
  window), the smallest defined value: fire as early as the window allows."""
  chosen = {}
  fixed = [r for r in runs if r["policy"] == "fixed" and r["seed"] == seed]
  for ratio in sorted({r["prune_ratio"] for r in fixed}):
    of = [r for r in fixed if r["prune_ratio"] == ratio]
    val = {r["fixed_epoch"]: r["validation_accuracy"] for r in of}
    best = max(sorted(val), key=lambda k: val[k])
    curve = max(of, key=lambda r: r["fixed_epoch"])["epi"] or []
    defined = [v for v in curve if _defined(v)]
    threshold = (curve[best - 1] if 1 <= best <= len(curve) and
                 _defined(curve[best - 1]) else min(defined, default=None))
    chosen[str(ratio)] = {
        "validation_accuracy_by_epoch": {str(k): float(v)
                                         for k, v in sorted(val.items())},
        "best_epoch": best, "epi_curve": curve,
        "threshold": None if threshold is None else round(float(threshold), 6),
    }
  return chosen


def measure_inference(runs, settings, rounds):
  """Adds to every run its inference speed-up over the dense architecture
  (and efficiency = speed-up x MAC fraction), all architectures (rebuilt
  from `widths_final`) timed alternately in this process at batch 512."""
  keras.utils.set_random_seed(0)
  size = settings["image_size"]
  dense = models_lib.resnet_cifar(settings["depth"], (size, size, 1), 10)
  images = tf.random.normal((512, size, size, 1))
  models = {"dense": dense}
  for r in runs:
    if r.get("widths_final"):
      models.setdefault(json.dumps(r["widths_final"], sort_keys=True),
                        keras_epi.prune_model(dense, {
                            name: np.arange(w)
                            for name, w in r["widths_final"].items()}))
  forwards = {k: tf.function(lambda x, m=m: m(x, training=False))
              for k, m in models.items()}
  ratio = timing.time_alternately(
      {k: lambda f=f: f(images) for k, f in forwards.items()}, rounds=rounds,
      warmup=1, num_calls=1)["ratio"]
  macs = keras_epi.count_macs(dense)
  for r in runs:
    speedup = (1.0 / ratio[json.dumps(r["widths_final"], sort_keys=True)]
               if r.get("widths_final") else 1.0 if r["policy"] == "dense"
               else r.get("throughput_dense_same_process") and  # TFMOT's own
               r["throughput"] / r["throughput_dense_same_process"])
    if speedup:
      r["inference_speedup_alternated"] = speedup
      r["inference_efficiency"] = speedup * r["macs_final"] / macs


def after_vs_before(run):
  """Median epoch time after the cut / before it, tracing epochs dropped
  (the first, and the first on the pruned model); None for a run that did
  not prune during training."""
  k, seconds = run.get("prune_epoch"), run.get("epoch_seconds") or []
  before, after = seconds[1:k or 0], seconds[(k or 0) + 1:]
  if run["policy"] not in _PRUNING or not k or not before or not after:
    return None
  return float(np.median(after) / np.median(before))


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def summarize(runs):
  """Per (policy, ratio[, prune epoch]): means and spread over seeds, and
  time and speed relative to the same seed's dense run and TPF run."""
  keys = {}
  for r in runs:
    keys.setdefault((r["policy"], r["prune_ratio"], r.get("fixed_epoch")),
                    []).append(r)
  dense = {r["seed"]: r for r in runs if r["policy"] == "dense"}
  tpf = {(r["seed"], r["prune_ratio"]): r for r in runs
         if r["policy"] == "train_prune_finetune"}
  rows = []
  def order(item):
    (policy, ratio, k), _ = item
    return (ratio or 0, POLICIES.index(policy) if policy in POLICIES else 9,
            k or 0)

  for (policy, ratio, k), group in sorted(keys.items(), key=order):
    def mean(fn, of=None):
      return _mean([fn(r) for r in group if of is None or of(r)])
    accuracy = [r["test_accuracy"] for r in group]
    rows.append({
        "policy": policy, "prune_ratio": ratio, "fixed_epoch": k,
        "seeds": sorted(r["seed"] for r in group),
        "prune_epochs": [r["prune_epoch"] for r in group],
        "test_accuracy": _mean(accuracy),
        "test_accuracy_std": (float(np.std(accuracy)) if len(accuracy) > 1
                              else None),
        "validation_accuracy": mean(lambda r: r.get("validation_accuracy")),
        "train_seconds": mean(lambda r: r["train_seconds"]),
        "time_vs_dense": mean(lambda r: r["train_seconds"] / dense[
            r["seed"]]["train_seconds"], lambda r: r["seed"] in dense),
        "time_vs_train_prune_finetune": mean(
            lambda r: r["train_seconds"] / tpf[r["seed"], ratio][
                "train_seconds"], lambda r: (r["seed"], ratio) in tpf),
        "macs_fraction": mean(lambda r: r["macs_final"] / r["macs_dense"]),
        "params_final": mean(lambda r: r["params_final"]),
        "throughput_vs_dense": mean(lambda r: r["throughput"] / dense[
            r["seed"]]["throughput"], lambda r: r["seed"] in dense),
        "inference_speedup": mean(
            lambda r: r.get("inference_speedup_alternated")),
        "inference_efficiency": mean(lambda r: r.get("inference_efficiency")),
        "epoch_seconds_after_vs_before": mean(after_vs_before)})
  return rows


def markdown(rows, settings):
  """The study's table of `summarize` rows."""
  f = _harness.fmt
  return "\n".join([
      "# Fashion-MNIST study", "",
      f"ResNet-{settings['depth']}, {settings['image_size']}x"
      f"{settings['image_size']} images, {settings['train_examples']} "
      f"training examples, {settings['epochs']} epochs; means over seeds "
      "(± std). Columns: benchmarks/study/README.md.", "", *_harness.table(
          ["policy", "ratio", "prune epoch(s)", "test acc", "val acc",
           "MACs", "params", "time / dense", "time / TPF",
           "epoch after/before cut", "inference speed-up (efficiency)"],
          [[r["policy"], f(r["prune_ratio"], ".1f"),
            ", ".join(str(e) for e in r["prune_epochs"]),
            f(r["test_accuracy"], ".4f") + (
                "" if r["test_accuracy_std"] is None
                else f" ± {r['test_accuracy_std']:.4f}"),
            f(r["validation_accuracy"], ".4f"), f(r["macs_fraction"], ".2f"),
            f(r["params_final"], ",.0f"), f(r["time_vs_dense"], ".2f"),
            f(r["time_vs_train_prune_finetune"], ".2f"),
            f(r["epoch_seconds_after_vs_before"], ".2f"),
            f"{f(r['inference_speedup'], '.2f')}x "
            f"({f(r['inference_efficiency'], '.2f')})"] for r in rows])
  ]) + "\n"


def plot(runs, path):
  """Accuracy against prune epoch with EPI's and Early-Bird's choices, and
  EPI over epochs with its threshold, per ratio."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  from matplotlib import ticker  # pylint: disable=g-import-not-at-top
  ratios = sorted({r["prune_ratio"] for r in runs
                   if r["prune_ratio"] is not None})
  fig, axes = plt.subplots(2, len(ratios), figsize=(6 * len(ratios), 8),
                           squeeze=False)
  dense = [r["test_accuracy"] for r in runs if r["policy"] == "dense"]
  for col, ratio in enumerate(ratios):
    ax, of = axes[0, col], [r for r in runs if r["prune_ratio"] == ratio]
    fixed = [r for r in of if r["policy"] == "fixed"]
    grid = sorted({r["fixed_epoch"] for r in fixed})
    ax.plot(grid, [np.mean([r["test_accuracy"] for r in fixed
                            if r["fixed_epoch"] == k]) for k in grid],
            "o-", color="C0", label="fixed epoch (oracle grid)")
    ax.plot([r["fixed_epoch"] for r in fixed],
            [r["test_accuracy"] for r in fixed], ".", color="C0", alpha=0.4)
    for policy, marker, color in (("epi", "*", "C3"),
                                  ("epi_validation_tau", "P", "C4"),
                                  ("early_bird", "D", "C2")):
      for i, r in enumerate(r for r in of if r["policy"] == policy):
        ax.plot(np.nan if r["prune_epoch"] is None else r["prune_epoch"],
                r["test_accuracy"], marker, color=color,
                markersize=12 if marker == "*" else 7,
                label=policy if i == 0 else None)
    tpf = [r["test_accuracy"] for r in of
           if r["policy"] == "train_prune_finetune"]
    for values, color, ls, label in ((dense, "k", "--", "dense"), (
        tpf, "C1", ":", "train-prune-finetune")):
      if values:
        ax.axhline(np.mean(values), color=color, ls=ls, label=label)
    ax.set(xlabel="prune epoch (dense epochs before the cut)",
           ylabel="test accuracy", title=f"{ratio:.0%} of channels removed")
    ax = axes[1, col]
    for r in of:
      if r["policy"] in ("epi", "fixed") and r["epi"]:
        values = [np.nan if v is None else v for v in r["epi"]]
        ax.plot(np.arange(1, len(values) + 1), values,
                "o-" if r["policy"] == "epi" else ".:",
                color="C3" if r["policy"] == "epi" else "C0", alpha=0.7)
    for policy, color in (("epi", "r"), ("epi_validation_tau", "C4")):
      for t in sorted({r["epi_threshold"] for r in of
                       if r["policy"] == policy}):
        ax.axhline(t, color=color, ls="--", label=f"{policy}: tau = {t:.4f}")
    ax.set(xlabel="epoch", ylabel="EPI", title="EPI over epochs (solid: "
           "EPI runs, dotted: fixed runs' dense phase)")
    for ax in axes[:, col]:
      ax.xaxis.set_major_locator(ticker.MaxNLocator(integer=True))
      ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def merge(config):
  """Gathers the run files into fashion_mnist_study.{json,md,png}."""
  runs, settings, machine = [], [], None
  directory = os.path.join(config.output_dir, "runs")
  for path in sorted(glob.glob(os.path.join(directory, "runs_seed*.json")) +
                     glob.glob(os.path.join(directory, "tfmot_seed*.json"))):
    with open(path) as f:
      part = json.load(f)
    runs += part["runs"]
    settings.append(part["config"])
    machine = machine or part.get("machine")
  if not runs:
    raise FileNotFoundError(f"No run files in {directory}: run the workers "
                            "first (see the module docstring).")
  study_settings = next(c for c in settings if "peer" not in c)
  measure_inference(runs, study_settings, config.inference_rounds)
  rows = summarize(runs)
  path = os.path.join(config.output_dir, "fashion_mnist_study.json")
  _harness.write_report(path, {
      "date": _harness.now(), "machine": machine, "config": study_settings,
      "runs": runs, "summary": rows,
      "threshold_from_validation": choose_threshold(runs)},
                        markdown(rows, study_settings))
  plot(runs, os.path.splitext(path)[0] + ".png")


if __name__ == "__main__":
  _harness.start(Config, lambda c: merge(c) if c.merge else worker(c), QUICK)
