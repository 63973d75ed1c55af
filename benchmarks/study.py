r"""The Fashion-MNIST study: when to prune, EPI against its baselines.

For each seed and prune ratio, on a CIFAR-style ResNet-20 trained on a
Fashion-MNIST slice, one run of each policy:

- ``dense``: no pruning.
- ``epi``: EPICallback (Taylor, the paper's tau) with keras_epi.fit, which
  continues on the physically smaller model after the trigger.
- ``fixed``: prune after k dense epochs, for every k in ``--grid`` (k = 0 is
  pruning at initialisation): the oracle grid.
- ``early_bird``: the Early-Bird indicator (You et al. 2020) and its
  published constants.
- ``train_prune_finetune``: the conventional pipeline. The dense run's model
  scores its channels for one more epoch (Taylor, the same criterion), is cut,
  and is fine-tuned for ``--finetune_epochs`` epochs at a small learning
  rate. Its ``train_seconds`` include the dense run's.
- ``epi_validation_tau``: EPI with tau chosen on the validation split (never
  the test set) of seed 0's grid: the EPI value at the end of the grid epoch
  with the best validation accuracy (`choose_threshold`). Each worker waits
  for seed 0's grid before these runs; seed 0's are in-sample.

Every policy except TFMOT uses keras_epi.fit, the same model, data, schedule
and criterion; only *when* to prune differs. The TFMOT peer runs in its own
process under tf_keras: ``benchmarks/tfmot_peer.py``.

A worker runs the whole grid for one seed and appends each finished run to
``<output_dir>/runs_seed<S>.json`` (so a cut-off study keeps what it
finished). ``--merge`` gathers the workers' files and the peer's into
``fashion_mnist_study.json`` (a top-level ``runs`` list and a summary), a
figure and a Markdown table:

  python -m benchmarks.study --seed=0 --threads=1 &
  python -m benchmarks.study --seed=1 --threads=1 &
  wait
  TF_USE_LEGACY_KERAS=1 python -m benchmarks.tfmot_peer --seeds=0,1
  python -m benchmarks.study --merge
"""

import glob
import json
import os
import sys
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

sys.path.insert(0, os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "examples"))

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position

from benchmarks import common  # pylint: disable=g-import-not-at-top,wrong-import-position
import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras_epi  # pylint: disable=g-import-not-at-top,wrong-import-position
import models as models_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

POLICIES = ("dense", "train_prune_finetune", "epi", "early_bird", "fixed",
            "epi_validation_tau")

_SEED = flags.DEFINE_integer("seed", 0, "Seed of this worker's runs.")
_MERGE = flags.DEFINE_bool("merge", False,
                           "Gather the workers' files; run nothing.")
_OUTPUT_DIR = flags.DEFINE_string("output_dir", "benchmarks/results/study",
                                  "Per-seed run files, the figure, the table.")
_WORK_DIR = flags.DEFINE_string(
    "work_dir", "/tmp/keras_epi_study",
    "Dense weights handed to the TFMOT peer (not committed).")
_POLICIES = flags.DEFINE_list("policies", list(POLICIES), "Policies to run.")
_RATIOS = flags.DEFINE_list("ratios", ["0.3", "0.5"],
                            "Prune ratios (fraction of channels removed).")
_GRID = flags.DEFINE_list("grid", ["0", "2", "4", "6", "8"],
                          "Prune epochs of the fixed (oracle) grid.")
_EPOCHS = flags.DEFINE_integer("epochs", 12, "Epochs of every schedule.")
_DEPTH = flags.DEFINE_integer("depth", 20, "CIFAR ResNet depth (6n + 2).")
_IMAGE_SIZE = flags.DEFINE_integer("image_size", 14,
                                   "Images are resized to this size.")
_TRAIN_EXAMPLES = flags.DEFINE_integer("train_examples", 8000,
                                       "Training examples (a fixed slice).")
_VALIDATION_EXAMPLES = flags.DEFINE_integer(
    "validation_examples", 1000,
    "Held out from the training split for choosing tau; never the test set.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.1, "Peak SGD rate.")
_WARMUP_EPOCHS = flags.DEFINE_float("warmup_epochs", 1.0, "Linear warm-up.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4, "L2 on kernels.")
_FINETUNE_EPOCHS = flags.DEFINE_integer(
    "finetune_epochs", 3, "Epochs of fine-tuning after the cut "
    "(train_prune_finetune), after one scoring epoch.")
_FINETUNE_LR = flags.DEFINE_float("finetune_learning_rate", 0.01,
                                  "Peak rate of the fine-tuning schedule.")
_EPI_WINDOW = flags.DEFINE_integer(
    "epi_window", 3, "EPI window r (the paper's 5 is for 90 epochs; a "
    "12-epoch schedule could not fire before epoch 6 with it).")
_EPI_THRESHOLD = flags.DEFINE_float(
    "epi_threshold", None, "tau; None: the paper's value for the criterion.")
_THREADS = flags.DEFINE_integer(
    "threads", 0, "TF intra- and inter-op threads (0: TF's default). Two "
    "workers with 1 thread each use 2 cores better than one with 2.")


def compile_model(model, schedule):
  model.compile(
      optimizer=keras.optimizers.SGD(schedule, momentum=0.9, nesterov=True),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  return model


class Study:
  """Data, model builder and evaluation shared by the runs of one worker."""

  def __init__(self, seed):
    self.seed = seed
    # The split is fixed (seed 0) across workers: the seed varies
    # initialisation, shuffling and augmentation only.
    dataset = data_lib.load("fashion_mnist", None, _TRAIN_EXAMPLES.value,
                            _VALIDATION_EXAMPLES.value, seed=0)
    self.dataset = dataset
    size = _IMAGE_SIZE.value
    self.shape = (size, size, dataset.image_shape[-1])
    norm = dict(mean=dataset.mean, std=dataset.std, image_size=size)
    self._norm = norm
    self.validation = data_lib.pipeline(dataset.validation, 500, False,
                                        **norm)
    self.test = data_lib.pipeline(dataset.test, 500, False, **norm)
    self.steps = dataset.num_train // _BATCH_SIZE.value
    self.sample = next(iter(self.test.unbatch().batch(512)))[0]
    self.macs_dense = keras_epi.count_macs(self.build())

  def train(self):
    """A fresh training pipeline: built after the run's seed is set, every
    run sees the same example order and augmentation, so the runs of one
    seed share their dense phase up to scheduling noise."""
    return data_lib.pipeline(self.dataset.train, _BATCH_SIZE.value, True,
                             augment=True, seed=self.seed, **self._norm)

  def build(self):
    return models_lib.resnet_cifar(_DEPTH.value, self.shape,
                                   self.dataset.num_classes,
                                   weight_decay=_WEIGHT_DECAY.value)

  def schedule(self):
    return models_lib.warmup_cosine(_LEARNING_RATE.value, _EPOCHS.value, self.steps,
                         _WARMUP_EPOCHS.value)

  def record(self, policy, ratio, model, seconds, epoch_seconds, epi=None,
             **extra):
    """One run's record: the issue's fields and what the plots need."""
    test = model.evaluate(self.test, verbose=0, return_dict=True)
    validation = model.evaluate(self.validation, verbose=0, return_dict=True)
    result = {
        "policy": policy, "prune_ratio": ratio, "seed": self.seed,
        "prune_epoch": None if epi is None else epi.prune_epoch,
        "test_accuracy": float(test["accuracy"]),
        "validation_accuracy": float(validation["accuracy"]),
        "train_seconds": seconds, "epoch_seconds": epoch_seconds,
        "macs_dense": self.macs_dense,
        "macs_final": keras_epi.count_macs(model),
        "params_final": model.count_params(),
        "throughput": common.throughput({"final": model}, self.sample,
                                        rounds=7)["final"],
        "epi": None if epi is None else epi.epi_history,
        "epi_threshold": None if epi is None else epi.threshold,
        "widths_final": (None if epi is None or epi.keep is None else
                         {k: len(v) for k, v in epi.keep.items()}),
    }
    result.update(extra)
    logging.info("%s ratio=%s seed=%d: test %.4f, val %.4f, %.0f s, pruned "
                 "after %s epochs, MACs %.2f of dense", policy, ratio,
                 self.seed, result["test_accuracy"],
                 result["validation_accuracy"], seconds,
                 result["prune_epoch"],
                 result["macs_final"] / self.macs_dense)
    return result


def run_dense(study):
  keras.utils.set_random_seed(study.seed)
  model = compile_model(study.build(), study.schedule())
  timer = common.epoch_timer(keras.callbacks.Callback)
  start = time.perf_counter()
  model.fit(study.train(), epochs=_EPOCHS.value, callbacks=[timer], verbose=0)
  seconds = time.perf_counter() - start
  os.makedirs(_WORK_DIR.value, exist_ok=True)
  np.savez(os.path.join(_WORK_DIR.value, f"dense_seed{study.seed}.npz"),
           **{f"{layer.name}/{i}": w for layer in model.layers
              for i, w in enumerate(layer.get_weights())})
  return model, study.record("dense", None, model, seconds, timer.seconds)


def run_epi(study, policy, ratio, prune_epoch=None, threshold=None):
  keras.utils.set_random_seed(study.seed)
  model = compile_model(study.build(), study.schedule())
  epi = keras_epi.EPICallback(
      prune_ratio=ratio, criterion="taylor",
      policy="epi" if policy == "epi_validation_tau" else policy,
      window=_EPI_WINDOW.value,
      threshold=threshold if threshold is not None else _EPI_THRESHOLD.value,
      prune_epoch=prune_epoch)
  timer = common.epoch_timer(keras.callbacks.Callback)
  start = time.perf_counter()
  final, _ = keras_epi.fit(model, study.train(), epochs=_EPOCHS.value,
                           callbacks=[epi, timer], verbose=0)
  seconds = time.perf_counter() - start
  extra = {"fixed_epoch": prune_epoch} if policy == "fixed" else {}
  if policy == "epi_validation_tau":
    extra["threshold_source"] = "validation split of seed 0's grid"
  if policy == "early_bird":
    extra["eb_distance"] = epi.early_bird_history
  return study.record(policy, ratio, final, seconds, timer.seconds, epi,
                      **extra)


def run_train_prune_finetune(study, dense_model, dense_record, ratio):
  """Scores the trained dense model for one epoch, cuts, fine-tunes."""
  keras.utils.set_random_seed(study.seed)
  model = study.build()
  model.set_weights(dense_model.get_weights())
  epochs = 1 + _FINETUNE_EPOCHS.value
  compile_model(model, models_lib.warmup_cosine(_FINETUNE_LR.value, epochs, study.steps,
                                     0))
  epi = keras_epi.EPICallback(prune_ratio=ratio, criterion="taylor",
                              policy="fixed", prune_epoch=1)
  timer = common.epoch_timer(keras.callbacks.Callback)
  start = time.perf_counter()
  final, _ = keras_epi.fit(model, study.train(), epochs=epochs,
                           callbacks=[epi, timer], verbose=0)
  seconds = time.perf_counter() - start
  record = study.record("train_prune_finetune", ratio, final,
                        dense_record["train_seconds"] + seconds,
                        dense_record["epoch_seconds"] + timer.seconds, epi,
                        finetune_seconds=seconds)
  record["prune_epoch"] = _EPOCHS.value + 1  # after training + 1 scoring epoch
  return record


def worker():
  if _THREADS.value:
    tf.config.threading.set_intra_op_parallelism_threads(_THREADS.value)
    tf.config.threading.set_inter_op_parallelism_threads(_THREADS.value)
  study = Study(_SEED.value)
  path = os.path.join(_OUTPUT_DIR.value, f"runs_seed{study.seed}.json")
  os.makedirs(_OUTPUT_DIR.value, exist_ok=True)
  runs = []

  def save(record):
    record["finished"] = time.strftime("%Y-%m-%dT%H:%M:%S")
    runs.append(record)
    with open(path, "w") as f:
      json.dump({"config": config(), "machine": common.machine_info(),
                 "runs": runs}, f, indent=1)

  ratios = [float(r) for r in _RATIOS.value]
  policies = _POLICIES.value
  if "dense" in policies or "train_prune_finetune" in policies:
    dense_model, dense_record = run_dense(study)
    save(dense_record)
    if "train_prune_finetune" in policies:
      for ratio in ratios:
        save(run_train_prune_finetune(study, dense_model, dense_record,
                                      ratio))
  for ratio in ratios:
    for policy in ("epi", "early_bird"):
      if policy in policies:
        save(run_epi(study, policy, ratio))
  if "fixed" in policies:
    for k in sorted(int(k) for k in _GRID.value):
      for ratio in ratios:
        save(run_epi(study, "fixed", ratio, prune_epoch=k))
  if "epi_validation_tau" in policies:
    # tau chosen on seed 0's validation split (its grid); seed 0's runs are
    # in-sample, the other seeds' are not.
    chosen = wait_for_threshold(ratios)
    for ratio in ratios:
      save(run_epi(study, "epi_validation_tau", ratio,
                   threshold=chosen[str(ratio)]["threshold"]))


def wait_for_threshold(ratios, poll_seconds=30, max_hours=3):
  """Waits for seed 0's grid, then returns choose_threshold of it."""
  path = os.path.join(_OUTPUT_DIR.value, "runs_seed0.json")
  grid = {int(k) for k in _GRID.value}
  for _ in range(int(max_hours * 3600 / poll_seconds)):
    if os.path.exists(path):
      with open(path) as f:
        runs = json.load(f)["runs"]
      done = {(r["prune_ratio"], r.get("fixed_epoch")) for r in runs
              if r["policy"] == "fixed"}
      if all((ratio, k) in done for ratio in ratios for k in grid):
        return choose_threshold(runs)
    time.sleep(poll_seconds)
  raise RuntimeError(f"Seed 0's grid did not appear in {path}.")


def config():
  return {name: flags.FLAGS[name].value for name in (
      "epochs", "depth", "image_size", "train_examples",
      "validation_examples", "batch_size", "learning_rate", "warmup_epochs",
      "weight_decay", "finetune_epochs", "finetune_learning_rate",
      "epi_window", "epi_threshold", "grid", "ratios", "threads")}


# -- merging -------------------------------------------------------------------


def _mean(values):
  values = [v for v in values if v is not None]
  return float(np.mean(values)) if values else None


def _std(values):
  values = [v for v in values if v is not None]
  return float(np.std(values)) if len(values) > 1 else None


def summarize(runs):
  """Per (policy, ratio[, prune epoch]): mean and spread over seeds."""
  keys = {}
  for r in runs:
    key = (r["policy"], r["prune_ratio"], r.get("fixed_epoch"))
    keys.setdefault(key, []).append(r)
  dense = {r["seed"]: r for r in runs if r["policy"] == "dense"}
  tpf = {(r["seed"], r["prune_ratio"]): r for r in runs
         if r["policy"] == "train_prune_finetune"}
  rows = []
  for (policy, ratio, k), group in sorted(
      keys.items(), key=lambda kv: (kv[0][1] or 0, POLICIES.index(kv[0][0])
                                    if kv[0][0] in POLICIES else 9,
                                    kv[0][2] or 0)):
    rows.append({
        "policy": policy, "prune_ratio": ratio, "fixed_epoch": k,
        "seeds": sorted(r["seed"] for r in group),
        "prune_epochs": [r["prune_epoch"] for r in group],
        "test_accuracy": _mean([r["test_accuracy"] for r in group]),
        "test_accuracy_std": _std([r["test_accuracy"] for r in group]),
        "validation_accuracy": _mean([r.get("validation_accuracy")
                                      for r in group]),
        "train_seconds": _mean([r["train_seconds"] for r in group]),
        "time_vs_dense": _mean([
            r["train_seconds"] / dense[r["seed"]]["train_seconds"]
            for r in group if r["seed"] in dense]),
        "time_vs_train_prune_finetune": _mean([
            r["train_seconds"] / tpf[r["seed"], ratio]["train_seconds"]
            for r in group if (r["seed"], ratio) in tpf]),
        "macs_fraction": _mean([r["macs_final"] / r["macs_dense"]
                                for r in group]),
        "params_final": _mean([r["params_final"] for r in group]),
        "throughput_vs_dense": _mean([
            r["throughput"] / dense[r["seed"]]["throughput"]
            for r in group if r["seed"] in dense]),
        "inference_speedup": _mean([r.get("inference_speedup_alternated")
                                    for r in group]),
        "inference_efficiency": _mean([r.get("inference_efficiency")
                                       for r in group]),
        "epoch_seconds_after_vs_before": _mean([
            _after_vs_before(r) for r in group]),
    })
  return rows


def _after_vs_before(run):
  """Median epoch time after the cut / before it, tracing epochs dropped
  (the first epoch, and the first on the pruned model, which retraces)."""
  k = run.get("prune_epoch")
  seconds = run.get("epoch_seconds") or []
  if run["policy"] not in ("epi", "early_bird", "fixed",
                           "epi_validation_tau") or not k:
    return None
  before, after = seconds[1:k], seconds[k + 1:]
  if not before or not after:
    return None
  return float(np.median(after) / np.median(before))


def _fmt(value, spec):
  return "-" if value is None else format(value, spec)


def markdown(rows, runs_config):
  lines = [
      "# Fashion-MNIST study (generated by benchmarks/study.py --merge)", "",
      f"ResNet-{runs_config['depth']}, {runs_config['image_size']}x"
      f"{runs_config['image_size']} images, {runs_config['train_examples']} "
      f"training examples, {runs_config['epochs']} epochs; means over seeds "
      "(± std). Time: wall time of the whole training (dense phase "
      "included), over the same seed's dense run and train-prune-finetune "
      "(TPF) run; two workers (one per seed, one thread each) shared the 2 "
      "cores. Epoch after/before cut: median epoch time on the pruned model "
      "over the dense epochs before it (tracing epochs dropped). Inference: "
      "batch 512, pruned vs dense architecture timed alternately in one "
      "process; efficiency = speed-up x MAC fraction.", "",
      "| policy | ratio | prune epoch(s) | test acc | val acc | MACs | "
      "params | time / dense | time / TPF | epoch after/before cut | "
      "inference speed-up (efficiency) |",
      "|---|---|---|---|---|---|---|---|---|---|---|"]
  for r in rows:
    acc = _fmt(r["test_accuracy"], ".4f")
    if r["test_accuracy_std"] is not None:
      acc += f" ± {r['test_accuracy_std']:.4f}"
    lines.append(
        f"| {r['policy']} | {_fmt(r['prune_ratio'], '.1f')} | "
        f"{', '.join(str(e) for e in r['prune_epochs'])} | {acc} | "
        f"{_fmt(r['validation_accuracy'], '.4f')} | "
        f"{_fmt(r['macs_fraction'], '.2f')} | "
        f"{_fmt(r['params_final'], ',.0f')} | "
        f"{_fmt(r['time_vs_dense'], '.2f')} | "
        f"{_fmt(r['time_vs_train_prune_finetune'], '.2f')} | "
        f"{_fmt(r['epoch_seconds_after_vs_before'], '.2f')} | "
        f"{_fmt(r['inference_speedup'], '.2f')}x "
        f"({_fmt(r['inference_efficiency'], '.2f')}) |")
  return "\n".join(lines) + "\n"


def plot(runs, path):
  """Accuracy vs prune epoch with EPI's and Early-Bird's choices; EPI over
  epochs with its threshold."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  ratios = sorted({r["prune_ratio"] for r in runs
                   if r["prune_ratio"] is not None})
  fig, axes = plt.subplots(2, len(ratios), figsize=(6 * len(ratios), 8),
                           squeeze=False)
  dense = [r["test_accuracy"] for r in runs if r["policy"] == "dense"]
  for col, ratio in enumerate(ratios):
    ax = axes[0, col]
    of = [r for r in runs if r["prune_ratio"] == ratio]
    grid = sorted({r["fixed_epoch"] for r in of if r["policy"] == "fixed"})
    means = [np.mean([r["test_accuracy"] for r in of if r["policy"] ==
                      "fixed" and r["fixed_epoch"] == k]) for k in grid]
    ax.plot(grid, means, "o-", color="C0", label="fixed epoch (oracle grid)")
    for r in of:
      if r["policy"] == "fixed":
        ax.plot(r["fixed_epoch"], r["test_accuracy"], ".", color="C0",
                alpha=0.4)
    for policy, marker, color in (("epi", "*", "C3"),
                                  ("epi_validation_tau", "P", "C4"),
                                  ("early_bird", "D", "C2")):
      chosen = [r for r in of if r["policy"] == policy]
      for i, r in enumerate(chosen):
        ax.plot(r["prune_epoch"] if r["prune_epoch"] is not None else
                np.nan, r["test_accuracy"], marker, color=color,
                markersize=12 if marker == "*" else 7,
                label=policy if i == 0 else None)
    if dense:
      ax.axhline(np.mean(dense), color="k", ls="--", label="dense")
    tpf = [r["test_accuracy"] for r in of
           if r["policy"] == "train_prune_finetune"]
    if tpf:
      ax.axhline(np.mean(tpf), color="C1", ls=":",
                 label="train-prune-finetune")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel="prune epoch (dense epochs before the cut)",
           ylabel="test accuracy", title=f"{ratio:.0%} of channels removed")
    ax.legend(fontsize=8)
    ax = axes[1, col]
    for r in of:
      if r["policy"] in ("epi", "fixed") and r["epi"]:
        values = [np.nan if v is None else v for v in r["epi"]]
        style = "o-" if r["policy"] == "epi" else ".:"
        ax.plot(np.arange(1, len(values) + 1), values, style,
                color="C3" if r["policy"] == "epi" else "C0", alpha=0.7)
    for policy, color in (("epi", "r"), ("epi_validation_tau", "C4")):
      for t in sorted({r["epi_threshold"] for r in of
                       if r["policy"] == policy}):
        ax.axhline(t, color=color, ls="--", label=f"{policy}: tau = {t:.4f}")
    ax.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
    ax.set(xlabel="epoch", ylabel="EPI",
           title="EPI over epochs (solid: EPI runs, dotted: fixed runs' "
                 "dense phase)")
    ax.legend(fontsize=8)
  fig.tight_layout()
  fig.savefig(path, dpi=110)
  plt.close(fig)


def choose_threshold(runs, seed=0):
  """tau from the validation split, per ratio: the grid epoch k* with the
  best validation accuracy (seed `seed`'s runs), and the EPI value of that
  seed's dense phase at the end of epoch k* (read off the fixed run with the
  longest dense phase). Where EPI is not defined yet at k* (k* <= window),
  the smallest defined value: fire as early as the window allows."""
  chosen = {}
  fixed = [r for r in runs if r["policy"] == "fixed" and r["seed"] == seed]
  for ratio in sorted({r["prune_ratio"] for r in fixed}):
    of = [r for r in fixed if r["prune_ratio"] == ratio]
    val = {r["fixed_epoch"]: r["validation_accuracy"] for r in of}
    best = max(sorted(val), key=lambda k: val[k])
    curve = max(of, key=lambda r: r["fixed_epoch"])["epi"] or []
    defined = [v for v in curve if v is not None]
    if 1 <= best <= len(curve) and curve[best - 1] is not None:
      threshold = curve[best - 1]
    else:
      threshold = min(defined) if defined else None
    chosen[str(ratio)] = {
        "validation_accuracy_by_epoch": {str(k): float(v)
                                         for k, v in sorted(val.items())},
        "best_epoch": best, "epi_curve": curve,
        "threshold": None if threshold is None else round(float(threshold), 6),
    }
  return chosen


def measure_inference(runs, config, repeats=9):
  """Throughput of every pruned architecture against the dense one, timed
  alternately in this process (the workers' own figures were taken while
  the other worker trained). Architectures are rebuilt from the runs'
  `widths_final` (weights do not change the time)."""
  keras.utils.set_random_seed(0)
  size = config["image_size"]
  dense = models_lib.resnet_cifar(config["depth"], (size, size, 1), 10)
  images = tf.random.normal((512, size, size, 1))
  architectures = {}
  for r in runs:
    if r.get("widths_final"):
      key = json.dumps(r["widths_final"], sort_keys=True)
      architectures.setdefault(key, keras_epi.prune_model(dense, {
          name: np.arange(width) for name, width in
          r["widths_final"].items()}))
  calls = [tf.function(lambda x, m=m: m(x, training=False))
           for m in [dense, *architectures.values()]]
  for call in calls:
    call(images).numpy()
  ratios = {key: [] for key in architectures}
  for _ in range(repeats):
    for key, call in zip(architectures, calls[1:]):
      seconds = []
      for c in (calls[0], call):
        start = time.perf_counter()
        c(images).numpy()
        seconds.append(time.perf_counter() - start)
      ratios[key].append(seconds[0] / seconds[1])
  macs = keras_epi.count_macs(dense)
  for r in runs:
    if r.get("widths_final"):
      key = json.dumps(r["widths_final"], sort_keys=True)
      speedup = float(np.median(ratios[key]))
      r["inference_speedup_alternated"] = speedup
      r["inference_efficiency"] = speedup * r["macs_final"] / macs
    elif r["policy"] == "dense":
      r["inference_speedup_alternated"] = 1.0
      r["inference_efficiency"] = 1.0
    elif r.get("throughput_dense_same_process"):  # the TFMOT peer's own
      speedup = r["throughput"] / r["throughput_dense_same_process"]
      r["inference_speedup_alternated"] = speedup
      r["inference_efficiency"] = speedup * r["macs_final"] / macs


def merge():
  runs, configs, machine = [], [], None
  for path in sorted(glob.glob(os.path.join(_OUTPUT_DIR.value,
                                            "runs_seed*.json")) +
                     glob.glob(os.path.join(_OUTPUT_DIR.value,
                                            "tfmot_seed*.json"))):
    with open(path) as f:
      part = json.load(f)
    runs += part["runs"]
    configs.append(part["config"])
    machine = machine or part.get("machine")
  if not runs:
    raise app.UsageError(f"No run files in {_OUTPUT_DIR.value}: run the "
                         "workers first (see the module docstring).")
  keras_config = next(c for c in configs if "peer" not in c)
  measure_inference(runs, keras_config)
  rows = summarize(runs)
  results = {"date": time.strftime("%Y-%m-%d"), "machine": machine,
             "config": keras_config, "runs": runs, "summary": rows,
             "threshold_from_validation": choose_threshold(runs)}
  out = os.path.dirname(_OUTPUT_DIR.value.rstrip("/"))
  with open(os.path.join(out, "fashion_mnist_study.json"), "w") as f:
    json.dump(results, f, indent=1)
  with open(os.path.join(out, "fashion_mnist_study.md"), "w") as f:
    f.write(markdown(rows, keras_config))
  plot(runs, os.path.join(out, "fashion_mnist_study.png"))
  print(markdown(rows, keras_config))
  print(json.dumps(results["threshold_from_validation"], indent=1))


def main(argv):
  del argv
  if _MERGE.value:
    merge()
  else:
    worker()


if __name__ == "__main__":
  app.run(main)
