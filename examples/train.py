r"""Trains a CNN with early structural pruning (EPI) and exports it.

  python examples/train.py --dataset=fashion_mnist --model=resnet20 \
      --epochs=12 --prune_ratio=0.5 --model_dir=runs/fmnist

Writes into --model_dir: config.json (every flag), TensorBoard logs under
logs/ (loss, accuracy, EPI, widths), history.csv, summary.json, epi.png (EPI
over epochs with the threshold, widths before/after), checkpoints (backup/
while training, final.keras), and the final model as a TF SavedModel under
saved_model/ whose `serve` endpoint takes raw uint8 images. The export is
verified by reloading it with `tf.saved_model.load` and comparing outputs.
With --budget=latency it writes latency_table.json: the keras_epi.LatencyTable
the cut is planned with (--latency_table, or one measured before training; a
restarted run reads it back instead of measuring again). With
--export_tflite it also writes model.tflite (float32) and
model_dynamic.tflite (dynamic-range quantised) with keras_epi.export_tflite:
uint8 images in, logits out, BatchNormalization folded, each checked in the
TFLite interpreter on the same test images.

Distribution: --strategy=mirrored uses every local GPU (MirroredStrategy);
--strategy=multi_worker runs MultiWorkerMirroredStrategy over the workers of
TF_CONFIG (start the same command on each worker). The batch size is global.
"""

import dataclasses
import json
import math
import os
import shutil
import sys
import tempfile
import time

from absl import app
from absl import flags
from absl import logging
import numpy as np
import tensorflow as tf

_HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(_HERE))
sys.path.insert(0, _HERE)

import keras  # pylint: disable=g-import-not-at-top,wrong-import-position

import data as data_lib  # pylint: disable=g-import-not-at-top,wrong-import-position
import keras_epi  # pylint: disable=g-import-not-at-top,wrong-import-position
import models as models_lib  # pylint: disable=g-import-not-at-top,wrong-import-position

_DATASET = flags.DEFINE_string(
    "dataset", "fashion_mnist",
    "fashion_mnist (offline from Debian's IDX files) or a tensorflow-datasets "
    "image classification name (cifar10, ...).")
_DATA_DIR = flags.DEFINE_string("data_dir", None,
                                "IDX files or the tfds data directory.")
_MODEL = flags.DEFINE_string(
    "model", "resnet20",
    "resnet20/32/44/56/110 (CIFAR-style) or a keras.applications name.")
_IMAGE_SIZE = flags.DEFINE_integer(
    "image_size", None, "Resize images to this size (keras.applications "
    "models need at least 32).")
_EPOCHS = flags.DEFINE_integer("epochs", 12, "Training epochs.")
_BATCH_SIZE = flags.DEFINE_integer("batch_size", 128, "Global batch size.")
_LEARNING_RATE = flags.DEFINE_float("learning_rate", 0.1,
                                    "Peak learning rate (SGD, momentum 0.9).")
_WARMUP_EPOCHS = flags.DEFINE_float("warmup_epochs", 1.0,
                                    "Linear warm-up before the cosine decay.")
_WEIGHT_DECAY = flags.DEFINE_float("weight_decay", 5e-4,
                                   "L2 on kernels (CIFAR ResNets).")
_AUGMENT = flags.DEFINE_bool("augment", True,
                             "Random crop and flip of training images.")
_PRUNE_RATIO = flags.DEFINE_float("prune_ratio", 0.5,
                                  "Fraction of the budget removed.")
_BUDGET = flags.DEFINE_enum(
    "budget", "neurons", ["neurons", "macs", "latency"],
    "What --prune_ratio is a fraction of: channels, MACs, or the latency of "
    "a training step that a keras_epi.LatencyTable predicts (0.5 asks for a "
    "predicted 2x; see --latency_table).")
_LATENCY_TABLE = flags.DEFINE_string(
    "latency_table", None,
    "With --budget=latency: a table written by LatencyTable.save, measured "
    "on this model. Without it, one is measured before training (a "
    "training step at the per-replica batch size, --latency_widths, "
    "--latency_repeats). Either way it is saved as latency_table.json in "
    "--model_dir.")
_LATENCY_WIDTHS = flags.DEFINE_list(
    "latency_widths", ["0.25", "0.5", "0.75", "1.0"],
    "Width fractions of the measured table (LatencyTable.measure(widths=)).")
_LATENCY_REPEATS = flags.DEFINE_integer(
    "latency_repeats", 5,
    "Timed steps per point of the measured table (the median is kept).")
_LATENCY_CACHE_DIR = flags.DEFINE_string(
    "latency_cache_dir",
    os.path.join(os.path.expanduser("~"), ".cache", "keras_epi", "latency"),
    "Tables measured before, reused for the same model, settings and "
    "machine (LatencyTable.measure(cache_dir=)); empty: measure every time.")
_CRITERION = flags.DEFINE_enum("criterion", "taylor", ["taylor", "magnitude"],
                               "Filter importance.")
_POLICY = flags.DEFINE_enum(
    "policy", "epi", ["epi", "early_bird", "fixed", "none"],
    "When to prune: EPI, Early-Bird, after --prune_epoch epochs, or never.")
_PRUNE_EPOCH = flags.DEFINE_integer("prune_epoch", None,
                                    "Dense epochs before pruning (fixed).")
_EPI_WINDOW = flags.DEFINE_integer("epi_window", 5, "EPI window r.")
_EPI_PRUNE_BY = flags.DEFINE_integer(
    "epi_prune_by", None,
    "Deadline for --policy=epi/early_bird: if the indicator has not fired "
    "after this many epochs, prune then anyway (summary: prune_reason).")
_EPI_THRESHOLD = flags.DEFINE_float(
    "epi_threshold", None, "EPI threshold tau (default: the paper's value "
    "for the criterion, 0.944 taylor / 0.983 magnitude).")
_ROUND_TO = flags.DEFINE_integer("round_to", 1,
                                 "Kept widths are multiples of this.")
_KEEP_RESIDUAL = flags.DEFINE_bool(
    "keep_residual", False,
    "Leave the residual streams whole; prune inside the blocks only.")
_GRADUAL_STEPS = flags.DEFINE_integer(
    "gradual_steps", 1, "1: one-shot prune; k: k steps over one epoch.")
_CONTINUE_ON_PRUNED = flags.DEFINE_bool(
    "continue_on_pruned", True,
    "Continue training on the physically pruned model (keras_epi.fit); "
    "otherwise hold removed channels at zero in the dense model.")
_STRATEGY = flags.DEFINE_enum("strategy", "one_device",
                              ["one_device", "mirrored", "multi_worker"],
                              "tf.distribute strategy.")
_LOGICAL_CPUS = flags.DEFINE_integer(
    "logical_cpus", 0, "Split the CPU into this many logical devices and "
    "mirror over them (tests --strategy=mirrored without GPUs).")
_MIXED_PRECISION = flags.DEFINE_bool("mixed_precision", False,
                                     "mixed_float16 compute.")
_MAX_TRAIN_EXAMPLES = flags.DEFINE_integer(
    "max_train_examples", None, "Use only this many training examples.")
_VALIDATION_EXAMPLES = flags.DEFINE_integer(
    "validation_examples", 0,
    "Held out of the training split for validation (threshold tuning).")
_EXPORT_TFLITE = flags.DEFINE_bool(
    "export_tflite", False,
    "Also write model.tflite (float32) and model_dynamic.tflite (dynamic-"
    "range quantised) into --model_dir, taking uint8 images like the "
    "SavedModel, checked against the Keras model (summary: tflite_*).")
_MODEL_DIR = flags.DEFINE_string("model_dir", None, "Output directory.")
_SEED = flags.DEFINE_integer("seed", 0, "Random seed.")
_VERBOSE = flags.DEFINE_integer("verbose", 1,
                                "Keras verbosity: 1 progress bar, 2 lines.")
flags.mark_flag_as_required("model_dir")


class UsageError(SystemExit):
  """A bad flag: exits with one line on stderr (no usage dump, no trace)."""

  def __init__(self, message):
    super().__init__(f"error: {message}")


@dataclasses.dataclass(frozen=True)
class TrainConfig:
  """Every flag, typed; saved as config.json beside the run."""
  dataset: str
  data_dir: str | None
  model: str
  image_size: int | None
  epochs: int
  batch_size: int
  learning_rate: float
  warmup_epochs: float
  weight_decay: float
  augment: bool
  prune_ratio: float
  budget: str
  latency_table: str | None
  latency_widths: tuple[float, ...]
  latency_repeats: int
  latency_cache_dir: str
  criterion: str
  policy: str
  prune_epoch: int | None
  epi_window: int
  epi_threshold: float | None
  epi_prune_by: int | None
  round_to: int
  keep_residual: bool
  gradual_steps: int
  continue_on_pruned: bool
  strategy: str
  logical_cpus: int
  mixed_precision: bool
  max_train_examples: int | None
  validation_examples: int
  export_tflite: bool
  model_dir: str
  seed: int
  verbose: int


def config_from_flags():
  """Reads the flags into a TrainConfig and checks them."""
  config = TrainConfig(**{f.name: flags.FLAGS[f.name].value
                          for f in dataclasses.fields(TrainConfig)})
  try:
    widths = tuple(float(w) for w in config.latency_widths)
  except ValueError:
    widths = ()
  if not widths or not all(0 < w <= 1 for w in widths):
    raise UsageError(f"--latency_widths must be fractions in (0, 1], got "
                     f"{','.join(config.latency_widths)}.")
  config = dataclasses.replace(config, latency_widths=widths)
  if config.latency_repeats < 1:
    raise UsageError("--latency_repeats must be >= 1.")
  if config.latency_table is not None:
    if config.budget != "latency":
      raise UsageError("--latency_table is only used with --budget=latency.")
    if not os.path.isfile(config.latency_table):
      raise UsageError(f"--latency_table={config.latency_table} is not a "
                       "file.")
  if (config.budget == "latency" and config.strategy == "multi_worker" and
      config.latency_table is None):
    raise UsageError("--budget=latency with --strategy=multi_worker needs "
                     "--latency_table: workers that each measured their own "
                     "table could plan different cuts.")
  if not 0 < config.prune_ratio < 1:
    raise UsageError(
        f"--prune_ratio must be in (0, 1), got {config.prune_ratio}.")
  if config.epochs < 1 or config.batch_size < 1:
    raise UsageError("--epochs and --batch_size must be >= 1.")
  if config.policy == "fixed" and (config.prune_epoch is None or
                                   config.prune_epoch < 0):
    raise UsageError("--policy=fixed needs --prune_epoch >= 0.")
  if config.policy != "fixed" and config.prune_epoch is not None:
    raise UsageError("--prune_epoch is only used with --policy=fixed.")
  if config.epi_prune_by is not None and (
      config.policy not in ("epi", "early_bird") or config.epi_prune_by < 1):
    raise UsageError("--epi_prune_by must be >= 1 and needs --policy=epi or "
                     "--policy=early_bird.")
  if config.model not in models_lib.CIFAR_RESNETS and not hasattr(
      keras.applications, config.model):
    raise UsageError(
        f"--model={config.model} is unknown: use one of "
        f"{sorted(models_lib.CIFAR_RESNETS)} or a keras.applications name "
        "(ResNet50, MobileNetV2, ...).")
  return config


def latency_table_for(config, model, strategy, saved):
  """The table of --latency_table; else the one a previous attempt of this
  run saved at `saved` (so a restarted run plans with the same numbers);
  else one measured on `model`: a training step (`train_on_batch`) at the
  per-replica batch size."""
  path = config.latency_table or (saved if os.path.isfile(saved) else None)
  if path is not None:
    try:
      table = keras_epi.LatencyTable.load(path)
    except (OSError, ValueError) as e:
      raise UsageError(f"--latency_table: {e}") from None
    logging.info("Latency table %s: %r.", path, table)
    if not table.metadata.get("training", True):
      logging.warning("The latency table %s was measured for inference; "
                      "--budget=latency then plans inference time, not "
                      "training time.", path)
    return table
  batch_size = max(1, config.batch_size // strategy.num_replicas_in_sync)
  table = keras_epi.LatencyTable.measure(
      model, batch_size=batch_size, training=True,
      widths=config.latency_widths, repeats=config.latency_repeats,
      round_to=config.round_to, cache_dir=config.latency_cache_dir or None)
  if "cached_from" in table.metadata:
    logging.info("Latency table %s, measured on %s for this model and "
                 "machine: reused.", table.metadata["cached_from"],
                 table.metadata.get("date"))
  else:
    logging.info("Measured %r in %.1f s.", table,
                 table.metadata["measure_seconds"])
  return table


def make_strategy(name, logical_cpus=0):
  """The tf.distribute strategy for --strategy (called before any TF op)."""
  if logical_cpus > 1:
    cpu = tf.config.list_physical_devices("CPU")[0]
    tf.config.set_logical_device_configuration(
        cpu, [tf.config.LogicalDeviceConfiguration()] * logical_cpus)
    if name == "mirrored":
      return tf.distribute.MirroredStrategy(
          [d.name for d in tf.config.list_logical_devices("CPU")])
  if name == "multi_worker":
    if "TF_CONFIG" not in os.environ:
      raise UsageError("--strategy=multi_worker needs TF_CONFIG (the "
                           "cluster and this worker's task).")
    return tf.distribute.MultiWorkerMirroredStrategy()
  if name == "mirrored":
    return tf.distribute.MirroredStrategy()
  gpus = tf.config.list_logical_devices("GPU")
  return tf.distribute.OneDeviceStrategy(gpus[0].name if gpus else "/cpu:0")


def is_chief(strategy):
  resolver = getattr(strategy, "cluster_resolver", None)
  if resolver is None or not resolver.task_type:
    return True
  return resolver.task_type == "chief" or (
      resolver.task_type == "worker" and resolver.task_id == 0 and
      "chief" not in resolver.cluster_spec().as_dict())


def learning_rate_schedule(config, steps_per_epoch):
  return models_lib.warmup_cosine(config.learning_rate, config.epochs,
                                  steps_per_epoch, config.warmup_epochs)


class WidthLogger(keras.callbacks.Callback):
  """Writes the dominant sub-network's widths per epoch to TensorBoard."""

  def __init__(self, epi, log_dir):
    super().__init__()
    self._epi = epi
    self._writer = tf.summary.create_file_writer(os.path.join(log_dir,
                                                              "widths"))

  def on_epoch_end(self, epoch, logs=None):
    widths = (self._epi.width_history[-1] if self._epi.width_history
              else None)
    if self._epi.keep is not None and self._epi.pruned:
      widths = {k: len(v) for k, v in self._epi.keep.items()}
    if not widths:
      return
    with self._writer.as_default(step=epoch):
      for name, width in widths.items():
        tf.summary.scalar(f"width/{name}", width)
      tf.summary.scalar("width/total", sum(widths.values()))
    self._writer.flush()


class HistoryCSV(keras.callbacks.CSVLogger):
  """A CSVLogger whose columns are the keys the logs have: Keras' own adds
  an empty ``val_`` column for every key when there is no validation."""

  def on_epoch_end(self, epoch, logs=None):
    if self.keys is None and logs:
      self.keys = sorted(logs)
    super().on_epoch_end(epoch, logs)


def write_cost(log_dir, cost, seconds):
  """The run's cost to TensorBoard: each phase in seconds (step 0), and
  each epoch's wall time (step = epoch)."""
  writer = tf.summary.create_file_writer(log_dir)
  with writer.as_default():
    for name, value in {**cost, **{f"phase_{k}": v
                                   for k, v in seconds.items()}}.items():
      if isinstance(value, (int, float)):
        tf.summary.scalar(f"cost/{name}", value, step=0)
    for epoch, value in enumerate(cost.get("epoch_seconds", [])):
      tf.summary.scalar("cost/epoch_seconds", value, step=epoch)
  writer.flush()


def deployable(model, dataset, image_size):
  """`model` behind the preprocessing of `data.preprocess`, as Keras
  layers: uint8 images in, logits out. final.keras, the SavedModel and the
  TFLite files all serve it; `model` is its last layer."""
  images = keras.Input(dataset.image_shape, dtype="uint8", name="images")
  x = keras.layers.Rescaling(1.0 / 255.0, name="to_unit")(images)
  if image_size and tuple(dataset.image_shape[:2]) != (image_size,
                                                         image_size):
    x = keras.layers.Resizing(image_size, image_size, name="resize")(x)
  mean, std = np.asarray(dataset.mean), np.asarray(dataset.std)
  x = keras.layers.Rescaling((1.0 / std).tolist(),
                             offset=(-mean / std).tolist(),
                             name="normalize")(x)
  return keras.Model(images, model(x), name="deployable")


def export_saved_model(model, path, sample):
  """Exports `serve(uint8 images) -> {logits, probabilities}` of the
  deployable `model` and checks a reload against it at two batch sizes."""
  shape = (None, *sample.shape[1:])

  @tf.function(input_signature=[tf.TensorSpec(shape, tf.uint8,
                                              name="images")])
  def serve(images):
    logits = tf.cast(model(images, training=False), tf.float32)
    return {"logits": logits, "probabilities": tf.nn.softmax(logits)}

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint("serve", serve)
  archive.write_out(path, verbose=False)
  reloaded = tf.saved_model.load(path)
  errors = []
  for n in (1, len(sample)):
    got = reloaded.serve(tf.constant(sample[:n]))["logits"].numpy()
    want = np.asarray(serve(tf.constant(sample[:n]))["logits"])
    errors.append(float(np.max(np.abs(got - want))))
  return max(errors)


def export_tflite(model, model_dir, sample):
  """Writes model.tflite (float32) and model_dynamic.tflite of the
  deployable `model`: uint8 images -> logits, as the SavedModel's `serve`.
  Each is checked on `sample` against the Keras model (the float one fails
  beyond float rounding; the quantised one is measured). Returns summary
  fields."""
  fields = {}
  for kind, filename, quantize in (("float", "model.tflite", None),
                                   ("dynamic", "model_dynamic.tflite",
                                    "dynamic")):
    path = os.path.join(model_dir, filename)
    error = keras_epi.export_tflite(model, path, quantize=quantize,
                                    check_data=sample)
    fields.update({f"tflite_{kind}": path,
                   f"tflite_{kind}_bytes": os.path.getsize(path),
                   f"tflite_{kind}_max_abs_error": error})
  return fields


def plot(path, epi, threshold, dense_sizes):
  """EPI over epochs with the threshold; widths before and after."""
  import matplotlib  # pylint: disable=g-import-not-at-top
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt  # pylint: disable=g-import-not-at-top
  import matplotlib.ticker  # pylint: disable=g-import-not-at-top
  fig, (ax1, ax2) = plt.subplots(1, 2, figsize=(12, 4.5))
  values = [np.nan if v is None else v for v in epi.epi_history]
  epochs = np.arange(1, len(values) + 1)
  ax1.plot(epochs, values, "o-", label="EPI")
  ax1.axhline(threshold, color="r", ls="--", label=f"threshold {threshold}")
  if epi.prune_epoch is not None:
    reason = {"epi": "EPI reached the threshold",
              "deadline": "the deadline (--epi_prune_by)"}.get(
                  epi.prune_reason, epi.prune_reason)
    ax1.axvline(epi.prune_epoch, color="k", ls=":",
                label=f"pruned after epoch {epi.prune_epoch}: {reason}")
  ax1.set(xlabel="epoch", ylabel="EPI", title="Early Pruning Indicator")
  ax1.xaxis.set_major_locator(matplotlib.ticker.MaxNLocator(integer=True))
  ax1.legend()
  names = list(dense_sizes)
  x = np.arange(len(names))
  ax2.bar(x - 0.2, [dense_sizes[n] for n in names], 0.4, label="dense")
  kept = epi.keep or (epi.width_history[-1] if epi.width_history else {})
  ax2.bar(x + 0.2, [len(kept[n]) if hasattr(kept.get(n), "__len__") else
                    kept.get(n, dense_sizes[n]) for n in names], 0.4,
          label="pruned" if epi.keep is not None else "dominant sub-network")
  ax2.set(xlabel="channel group", ylabel="channels", title="Widths")
  ax2.set_xticks(x, names, rotation=90, fontsize=6)
  ax2.legend()
  fig.tight_layout()
  fig.savefig(path, dpi=120)
  plt.close(fig)


def load_data(config):
  """The dataset and its pipelines: (dataset, input shape, train, validation,
  test, steps per epoch)."""
  try:
    dataset = data_lib.load(config.dataset, config.data_dir,
                            config.max_train_examples,
                            config.validation_examples, config.seed)
  except data_lib.DataError as e:
    sys.exit(f"error: {e}")
  logging.info("Data: %s (%s), %d train / %d validation / %d test, %s, %d "
               "classes", dataset.name, dataset.source, dataset.num_train,
               dataset.num_validation, dataset.num_test, dataset.image_shape,
               dataset.num_classes)
  size = config.image_size
  shape = ((size, size, dataset.image_shape[-1]) if size
           else dataset.image_shape)
  norm = dict(mean=dataset.mean, std=dataset.std, image_size=size)
  train_ds = data_lib.pipeline(dataset.train, config.batch_size, True,
                               augment=config.augment, seed=config.seed,
                               **norm)
  val_ds = (data_lib.pipeline(dataset.validation, config.batch_size, False,
                              **norm) if dataset.validation else None)
  test_ds = data_lib.pipeline(dataset.test, config.batch_size, False, **norm)
  steps = dataset.num_train // config.batch_size
  if steps < 1:
    raise UsageError(f"--batch_size={config.batch_size} exceeds the "
                     f"{dataset.num_train} training examples.")
  return dataset, shape, train_ds, val_ds, test_ds, steps


def make_callbacks(config, model, strategy, model_dir):
  """(EPICallback or None, latency table or None, every callback)."""
  log_dir = os.path.join(model_dir, "logs")
  callbacks = [keras.callbacks.BackupAndRestore(os.path.join(model_dir,
                                                             "backup"))]
  latency_table = None
  if config.budget == "latency" and config.policy != "none":
    saved = os.path.join(model_dir, "latency_table.json")
    latency_table = latency_table_for(config, model, strategy, saved)
    latency_table.save(saved)
  epi = None
  if config.policy != "none":
    epi = keras_epi.EPICallback(
        prune_ratio=config.prune_ratio, budget=config.budget,
        latency_table=latency_table, criterion=config.criterion,
        window=config.epi_window, threshold=config.epi_threshold,
        policy=config.policy, prune_epoch=config.prune_epoch,
        prune_by=config.epi_prune_by, round_to=config.round_to,
        keep_residual=config.keep_residual,
        gradual_steps=config.gradual_steps)
    callbacks = [epi, WidthLogger(epi, log_dir)] + callbacks
  callbacks += [keras.callbacks.TensorBoard(log_dir),
                HistoryCSV(os.path.join(model_dir, "history.csv"),
                           append=True)]
  return epi, latency_table, callbacks


def inference_check(final, dataset, config, history):
  """Training accuracy as the fit logged it and in inference mode on up to
  1,024 training images, with a warning where they part ways (the
  BatchNormalization moving statistics have not settled)."""
  fit_accuracy = history.history.get("accuracy", [None])[-1]
  subset = data_lib.pipeline(dataset.train.take(1024), config.batch_size,
                             False, dataset.mean, dataset.std,
                             config.image_size)
  accuracy = float(final.evaluate(subset, verbose=0)[1])
  if fit_accuracy is not None and accuracy < fit_accuracy - 0.15:
    logging.warning(
        "Training images score %.3f in inference mode but %.3f in the last "
        "epoch's training steps: BatchNormalization's moving statistics "
        "have not caught up with the weights, as in a run of a few epochs "
        "or steps. Test accuracy is then low for the same "
        "reason; train longer (more steps) for a model to use.", accuracy,
        fit_accuracy)
  return {"train_accuracy_fit": fit_accuracy,
          "train_accuracy_inference": accuracy}


def _plain(values):
  """Floats for JSON: NaN (a value not measured) as None."""
  return [None if math.isnan(float(v)) else float(v) for v in values]


def main(argv):
  del argv
  started = time.perf_counter()
  config = config_from_flags()
  strategy = make_strategy(config.strategy, config.logical_cpus)
  chief = is_chief(strategy)
  model_dir = config.model_dir if chief else tempfile.mkdtemp(
      prefix="keras_epi_worker_")
  os.makedirs(model_dir, exist_ok=True)
  with open(os.path.join(model_dir, "config.json"), "w") as f:
    json.dump(dataclasses.asdict(config), f, indent=2)
  logging.info("Config: %s", config)
  keras.utils.set_random_seed(config.seed)
  if config.mixed_precision:
    keras.mixed_precision.set_global_policy("mixed_float16")
  dataset, shape, train_ds, val_ds, test_ds, steps = load_data(config)
  with strategy.scope():
    model = models_lib.build_model(config.model, shape, dataset.num_classes,
                                   weight_decay=config.weight_decay)
    model.compile(
        optimizer=keras.optimizers.SGD(
            learning_rate_schedule(config, steps), momentum=0.9,
            nesterov=True),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
  # Keras 3's fit fails under MultiWorkerMirroredStrategy without this
  # (keras-team/keras#20585); keras_epi.fit applies it itself.
  keras_epi.multi_worker_fit_workaround(model)
  dense_macs = keras_epi.count_macs(model)
  dense_params = model.count_params()
  dense_sizes = {g.name: g.size for g in keras_epi.channel_groups(model)}
  seconds = {"setup": time.perf_counter() - started}

  start = time.perf_counter()
  epi, latency_table, callbacks = make_callbacks(config, model, strategy,
                                                 model_dir)
  seconds["latency_table"] = time.perf_counter() - start
  start = time.perf_counter()
  if epi is not None and config.continue_on_pruned:
    final, history = keras_epi.fit(model, train_ds, validation_data=val_ds,
                                   epochs=config.epochs, callbacks=callbacks,
                                   verbose=config.verbose)
  else:
    history = model.fit(train_ds, validation_data=val_ds,
                        epochs=config.epochs, callbacks=callbacks,
                        verbose=config.verbose)
    final = epi.pruned_model if epi is not None and epi.pruned else model
  seconds["train"] = time.perf_counter() - start
  kept = epi.keep if epi is not None and epi.keep is not None else None
  widths_final = None if kept is None else {
      name: len(kept[name]) if name in kept else size
      for name, size in dense_sizes.items()}
  if widths_final is not None:
    logging.info("Pruned architecture: %s", json.dumps(widths_final,
                                                      sort_keys=True))

  start = time.perf_counter()
  test_loss, test_accuracy = final.evaluate(test_ds, verbose=0)[:2]
  checks = inference_check(final, dataset, config, history)
  seconds["evaluate"] = time.perf_counter() - start
  start = time.perf_counter()
  served = deployable(final, dataset, config.image_size)
  served.save(os.path.join(model_dir, "final.keras"))
  sample = next(iter(dataset.test.batch(8)))[0].numpy()
  export_error = export_saved_model(
      served, os.path.join(model_dir, "saved_model"), sample)
  tflite = (export_tflite(served, model_dir, sample)
            if config.export_tflite else {})
  seconds["export"] = time.perf_counter() - start
  summary = {
      "dataset": dataset.name, "model": config.model,
      "policy": config.policy, "criterion": config.criterion,
      "prune_ratio": config.prune_ratio, "budget": config.budget,
      "seed": config.seed,
      "prune_epoch": None if epi is None else epi.prune_epoch,
      "prune_reason": None if epi is None else epi.prune_reason,
      "epochs": config.epochs,
      "macs_dense": dense_macs, "macs_final": keras_epi.count_macs(final),
      "params_dense": dense_params, "params_final": final.count_params(),
      "test_accuracy": float(test_accuracy), "test_loss": float(test_loss),
      **checks,
      "train_seconds": seconds["train"],
      "training_cost": None if epi is None else epi.training_cost,
      "epi": None if epi is None else epi.epi_history,
      "epi_threshold": None if epi is None else epi.threshold,
      "widths_dense": dense_sizes,
      "widths_final": widths_final,
      "history": {k: _plain(v) for k, v in history.history.items()},
      "final_keras": os.path.join(model_dir, "final.keras"),
      "saved_model": os.path.join(model_dir, "saved_model"),
      "saved_model_max_abs_error": export_error,
      "replicas": strategy.num_replicas_in_sync,
      **tflite,
  }
  if latency_table is not None:
    summary.update(
        latency_table=os.path.join(model_dir, "latency_table.json"),
        latency_table_reused=latency_table.metadata.get("cached_from"),
        latency_predicted_dense=latency_table.predict(model),
        latency_predicted_final=latency_table.predict(final))
  if tflite:
    logging.info("TFLite: %s (%d bytes, max |tflite - keras| %.1e), %s (%d "
                 "bytes, %.1e).", tflite["tflite_float"],
                 tflite["tflite_float_bytes"],
                 tflite["tflite_float_max_abs_error"],
                 tflite["tflite_dynamic"], tflite["tflite_dynamic_bytes"],
                 tflite["tflite_dynamic_max_abs_error"])
  if epi is not None:
    plot(os.path.join(model_dir, "epi.png"), epi, epi.threshold, dense_sizes)
  seconds["total"] = time.perf_counter() - started
  summary["seconds"] = seconds
  if epi is not None:
    write_cost(os.path.join(model_dir, "logs", "cost"), epi.training_cost,
               seconds)
  with open(os.path.join(model_dir, "summary.json"), "w") as f:
    json.dump(summary, f, indent=2)
  logging.info(
      "Done in %.0f s (set-up %.0f, latency table %.0f, training %.0f, "
      "evaluation %.0f, export %.0f): test accuracy %.4f, MACs %.2fM -> "
      "%.2fM, params %d -> %d, pruned after %s epochs (%s). Summary %s, "
      "plot %s, SavedModel %s (reload error %.1e).", seconds["total"],
      seconds["setup"], seconds["latency_table"], seconds["train"],
      seconds["evaluate"], seconds["export"], test_accuracy,
      dense_macs / 1e6, summary["macs_final"] / 1e6, dense_params,
      summary["params_final"], summary["prune_epoch"],
      summary["prune_reason"], os.path.join(model_dir, "summary.json"),
      os.path.join(model_dir, "epi.png"), summary["saved_model"],
      export_error)
  if not chief:
    shutil.rmtree(model_dir, ignore_errors=True)


if __name__ == "__main__":
  app.run(main)
