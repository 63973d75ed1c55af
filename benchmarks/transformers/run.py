"""Transformers under EPI: a small ViT on Fashion-MNIST and a small causal LM
on the Python standard library's sources.

  python -m benchmarks.transformers.run            # results/, ~1 hour
  python -m benchmarks.transformers.run --quick    # to a scratch directory

For every seed: the dense model, then EPI (Taylor scores, the paper's tau,
a deadline halfway through the schedule) at each prune ratio, all through
`keras_epi.fit`, the same data, schedule and seed. Per run: accuracy (ViT)
or perplexity (LM) on held-out data, MACs, parameters, the kept widths, the
prune epoch, wall time, and the inference latency of the final model timed
alternately against the dense architecture in this process. Every run is
appended to the results file as it ends, and a run already there is not
run again (resumable).
"""

import dataclasses
import glob
import json
import os
import sysconfig
import time

from absl import logging
import keras
import keras_hub
import numpy as np

from benchmarks import _harness
from examples import data as data_lib
import keras_epi
from keras_epi import timing


@dataclasses.dataclass(frozen=True)
class Config:
  seeds: tuple = (0, 1)
  ratios: tuple = (0.3, 0.5)
  tasks: tuple = ("vit", "lm")
  # The EPI runs of each task (POLICIES): the ViT's with the model width
  # too (through_norms=True; a CausalLM's tied output embedding keeps its
  # width whole), under the neuron and the MAC budget.
  vit_policies: tuple = ("epi", "epi_macs", "epi_width", "epi_width_macs")
  lm_policies: tuple = ("epi",)
  # ViT: 28x28 images in 7x7 patches of 4x4 pixels.
  vit_train_examples: int = 6000
  vit_layers: int = 4
  vit_heads: int = 4
  vit_width: int = 64
  vit_mlp: int = 128
  vit_epochs: int = 12
  vit_learning_rate: float = 2e-3
  # LM: bytes of the standard library's sources, in sequences of 64.
  lm_train_bytes: int = 393216
  lm_test_bytes: int = 65536
  lm_sequence: int = 64
  lm_layers: int = 2
  lm_heads: int = 4
  lm_width: int = 128
  lm_mlp: int = 512
  lm_epochs: int = 6
  lm_learning_rate: float = 2e-3
  batch_size: int = 64
  epi_window: int = 3
  latency_rounds: int = 9
  data_dir: str = _harness.flag(None, "Fashion-MNIST IDX files (None: "
                                "Debian's package).")
  output_dir: str = "benchmarks/transformers/results"
  quick: bool = _harness.flag(False, "Smoke run: tiny data and models, to a "
                              "scratch directory.")


# EPICallback's settings of each policy.
POLICIES = {
    "epi": {},
    "epi_macs": {"budget": "macs"},
    "epi_width": {"through_norms": True},
    "epi_width_macs": {"through_norms": True, "budget": "macs"},
}


QUICK = {"seeds": (0,), "ratios": (0.5,), "vit_train_examples": 256,
         "vit_layers": 1, "vit_epochs": 2, "lm_train_bytes": 16384,
         "lm_test_bytes": 4096, "lm_layers": 1, "lm_epochs": 2,
         "latency_rounds": 2, "epi_window": 1,
         "output_dir": _harness.scratch("transformers")}


# -- data ----------------------------------------------------------------------


def fashion_mnist(config):
  """(x_train, y_train, x_test, y_test): float images in [0, 1]."""
  directory = config.data_dir or "/usr/share/datasets/fashion-mnist"
  arrays = [data_lib.read_idx(os.path.join(directory, f"{name}.gz"))
            for name in ("train-images-idx3-ubyte", "train-labels-idx1-ubyte",
                         "t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte")]
  x, y, x_test, y_test = arrays
  n = config.vit_train_examples
  return (x[:n, ..., None].astype("float32") / 255.0, y[:n].astype("int32"),
          x_test[..., None].astype("float32") / 255.0,
          y_test.astype("int32"))


def stdlib_bytes(config):
  """(train, test) byte arrays: the standard library's .py files, sorted,
  concatenated; the test bytes come after the training bytes."""
  files = sorted(glob.glob(os.path.join(sysconfig.get_paths()["stdlib"],
                                        "*.py")))
  text = b"".join(open(f, "rb").read() for f in files)  # pylint: disable=consider-using-with
  need = config.lm_train_bytes + config.lm_test_bytes
  if len(text) < need:
    raise ValueError(f"The standard library has {len(text)} bytes of "
                     f"sources; the study needs {need}.")
  data = np.frombuffer(text[:need], dtype=np.uint8).astype("int32")
  return data[:config.lm_train_bytes], data[config.lm_train_bytes:]


def sequences(data, length):
  """Inputs ({"token_ids", "padding_mask"}) and next-byte targets."""
  n = (len(data) - 1) // length
  x = data[:n * length].reshape(n, length)
  y = data[1:n * length + 1].reshape(n, length)
  return {"token_ids": x, "padding_mask": np.ones_like(x)}, y


# -- models ----------------------------------------------------------------------


def vit(config):
  backbone = keras_hub.models.ViTBackbone(
      image_shape=(28, 28, 1), patch_size=4, num_layers=config.vit_layers,
      num_heads=config.vit_heads, hidden_dim=config.vit_width,
      mlp_dim=config.vit_mlp)
  model = keras_hub.models.ViTImageClassifier(backbone=backbone,
                                              num_classes=10,
                                              preprocessor=None)
  model.compile(
      optimizer=keras.optimizers.AdamW(config.vit_learning_rate),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      metrics=["accuracy"])
  return model


def causal_lm(config):
  backbone = keras_hub.models.GPT2Backbone(
      vocabulary_size=256, num_layers=config.lm_layers,
      num_heads=config.lm_heads, hidden_dim=config.lm_width,
      intermediate_dim=config.lm_mlp, max_sequence_length=config.lm_sequence)
  model = keras_hub.models.GPT2CausalLM(backbone=backbone, preprocessor=None)
  model.compile(
      optimizer=keras.optimizers.AdamW(config.lm_learning_rate),
      loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
      weighted_metrics=[])
  return model


# -- runs ----------------------------------------------------------------------


def run(config, task, seed, ratio, data, policy="dense"):
  """One run of `task` and `policy` (dense, or one of POLICIES at
  `ratio`): its record."""
  settings = POLICIES.get(policy, {})
  through_norms = settings.get("through_norms", False)
  keras.utils.set_random_seed(seed)
  epochs = config.vit_epochs if task == "vit" else config.lm_epochs
  x, y, x_test, y_test = data
  start = time.perf_counter()
  model = vit(config) if task == "vit" else causal_lm(config)
  dense_macs = keras_epi.count_macs(model, input_shape=_shape(task, config))
  kwargs = dict(batch_size=config.batch_size, epochs=epochs, verbose=0)
  epi = None
  if policy == "dense":
    model.fit(x, y, **kwargs)
    final = model
  else:
    epi = keras_epi.EPICallback(prune_ratio=ratio, window=config.epi_window,
                                prune_by=epochs // 2, verbose=0,
                                **settings)
    final, _ = keras_epi.fit(model, x, y, callbacks=[epi], **kwargs)
    at_cut = _at_cut(model, epi, task, x_test, y_test, through_norms)
  wall = time.perf_counter() - start
  test = final.evaluate(x_test, y_test, batch_size=256, verbose=0,
                        return_dict=True)
  record = {
      "task": task, "policy": policy,
      "ratio": ratio, "seed": seed, "epochs": epochs,
      "prune_epoch": epi and epi.prune_epoch,
      "prune_reason": epi and epi.prune_reason,
      "wall_seconds": wall,
      "macs_fraction": keras_epi.count_macs(
          final, input_shape=_shape(task, config)) / dense_macs,
      "params": final.count_params(), "params_dense": model.count_params(),
      "widths": epi and {k: len(v) for k, v in epi.keep.items()},
      "training_cost": epi and epi.training_cost,
  }
  if task == "vit":
    record["test_accuracy"] = float(test["accuracy"])
  else:
    record["test_perplexity"] = float(np.exp(test["loss"]))
  if epi is not None:
    record.update(_latency(config, task, final, x_test))
    record["at_cut"] = at_cut
  logging.info("%s %s ratio=%s seed=%d: %s", task, record["policy"], ratio,
               seed, {k: record.get(k) for k in (
                   "test_accuracy", "test_perplexity", "macs_fraction",
                   "prune_epoch", "wall_seconds")})
  return record


def _at_cut(dense, epi, task, x_test, y_test, through_norms):
  """The cut's own effect, before any training on: `dense` as it was at
  the cut (keras_epi.fit trains the pruned copy on) against the model the
  plan cuts from it, on the first 2,000 test examples: accuracy (ViT) or
  perplexity (LM) of both and the largest output difference relative to
  the largest dense output."""
  if epi.keep is None:
    return None
  x = keras.tree.map_structure(lambda a: a[:2000], x_test)
  y = y_test[:2000]
  cut = keras_epi.prune_model(dense, epi.keep, through_norms=through_norms)
  out = {}
  for name, m in (("dense", dense), ("cut", cut)):
    logits = keras.ops.convert_to_numpy(m.predict(x, batch_size=256,
                                                  verbose=0))
    out[name] = logits
  metric = {}
  for name, logits in out.items():
    if task == "vit":
      metric[name] = float(np.mean(np.argmax(logits, -1) == y))
    else:
      z = logits - logits.max(-1, keepdims=True)
      logp = z - np.log(np.exp(z).sum(-1, keepdims=True))
      metric[name] = float(np.exp(-np.mean(
          np.take_along_axis(logp, y[..., None], -1))))
  return {"dense": metric["dense"], "cut": metric["cut"],
          "relative_output_difference": float(
              np.abs(out["cut"] - out["dense"]).max() /
              np.abs(out["dense"]).max())}


def _shape(task, config):
  return (28, 28, 1) if task == "vit" else [(config.lm_sequence,)] * 2


def _latency(config, task, final, x_test):
  """Inference of `final` against a dense model of the same architecture
  (random weights: time depends on shapes), alternated in this process."""
  dense = vit(config) if task == "vit" else causal_lm(config)
  batch = keras.tree.map_structure(lambda a: a[:config.batch_size], x_test)
  runs = timing.time_alternately(
      {"dense": lambda: dense.predict_on_batch(batch),
       "pruned": lambda: final.predict_on_batch(batch)},
      rounds=config.latency_rounds, warmup=2)
  low, high = runs["ratio_quartiles"]["pruned"]
  return {"latency_ratio": runs["ratio"]["pruned"],
          "latency_ratio_quartiles": [low, high],
          "latency_dense_seconds": runs["median_seconds"]["dense"],
          "latency_pruned_seconds": runs["median_seconds"]["pruned"]}


def summarize(runs):
  """Per (task, ratio): the mean metric and time over seeds, relative to
  the same seed's dense run."""
  dense = {(r["task"], r["seed"]): r for r in runs if r["policy"] == "dense"}
  rows = {}
  for r in runs:
    rows.setdefault((r["task"], r["ratio"] or 0.0, r["policy"]), []).append(r)
  out = []
  for (task, ratio, policy), of in sorted(rows.items()):
    metric = "test_accuracy" if task == "vit" else "test_perplexity"
    values = [r[metric] for r in of]

    def mean(key, where=of):
      values = [r[key] for r in where if r.get(key) is not None]
      return float(np.mean(values)) if values else None
    cuts = [r["at_cut"] for r in of if r.get("at_cut")]
    out.append({
        "task": task, "policy": policy, "ratio": ratio or None,
        "seeds": [r["seed"] for r in of],
        metric: float(np.mean(values)), f"{metric}_std": float(np.std(values)),
        "prune_epochs": [r["prune_epoch"] for r in of],
        "macs_fraction": mean("macs_fraction"),
        "params": mean("params"), "latency_ratio": mean("latency_ratio"),
        "time_vs_dense": float(np.mean([
            r["wall_seconds"] / dense[task, r["seed"]]["wall_seconds"]
            for r in of if (task, r["seed"]) in dense])),
        "widths": [r["widths"] for r in of],
        "at_cut_dense": [c["dense"] for c in cuts],
        "at_cut_cut": [c["cut"] for c in cuts]})
  return out


def markdown(results):
  f = _harness.fmt
  rows = []
  for r in results["summary"]:
    metric = ("test_accuracy" if r["task"] == "vit" else "test_perplexity")
    at_cut = " ".join(f"{d:.3f}->{c:.3f}" for d, c in zip(
        r.get("at_cut_dense", []), r.get("at_cut_cut", []))) or "-"
    rows.append([
        r["task"], r["policy"], f(r["ratio"], ".1f"), " ".join(
            "-" if e is None else str(e) for e in r["prune_epochs"]),
        f"{r[metric]:.4f} ± {r[metric + '_std']:.4f}",
        f(r["macs_fraction"], ".3f"), f(r["params"], ",.0f"),
        f(r["latency_ratio"], ".3f"), f(r["time_vs_dense"], ".2f"), at_cut])
  c = results["config"]
  return "\n".join([
      "# Transformers under EPI", "", _harness.machine_line(results), "",
      f"ViT ({c['vit_layers']} layers, {c['vit_heads']} heads of width "
      f"{c['vit_width'] // c['vit_heads']}, MLP {c['vit_mlp']}) on "
      f"{c['vit_train_examples']} Fashion-MNIST images, {c['vit_epochs']} "
      f"epochs; GPT-2 causal LM ({c['lm_layers']} layers, {c['lm_heads']} "
      f"heads, width {c['lm_width']}, MLP {c['lm_mlp']}) on "
      f"{c['lm_train_bytes']} bytes of the standard library's sources, "
      f"{c['lm_epochs']} epochs. EPI: Taylor, tau 0.944, window "
      f"{c['epi_window']}, deadline halfway; means over seeds "
      f"{list(c['seeds'])}. Latency: inference of the final model / the "
      "dense architecture, alternated in one process (batch "
      f"{c['batch_size']}). Setup: benchmarks/transformers/README.md.", "",
      "Policies: epi (neuron budget: heads and MLP neurons count one each), "
      "epi_macs (MAC budget), epi_width and epi_width_macs (the same with "
      "`through_norms=True`: the model width cut too, approximate). At "
      "the cut: the metric of the dense model at the "
      "prune epoch -> of the model cut from it, before training on (2,000 "
      "test examples), per seed.", "",
      *_harness.table(["task", "policy", "ratio", "prune epoch per seed",
                       "test accuracy / perplexity", "MACs", "params",
                       "latency / dense", "time / dense", "at the cut"],
                      rows)]) + "\n"


def load_runs(path):
  """The runs of a results file written by `save_runs` ([] if none)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    return json.load(f)["runs"]


def save_runs(path, config, runs, summarize_, markdown_):
  """Writes `runs` with their summary and report (after every run, so that
  a study resumes where it stopped)."""
  results = {"date": _harness.now(), "machine": _harness.machine(),
             "config": dataclasses.asdict(config), "runs": runs,
             "summary": summarize_(runs)}
  _harness.write_report(path, results, markdown_(results))


def main(config):
  path = os.path.join(config.output_dir, "transformers.json")
  runs = load_runs(path)
  done = {(r["task"], r["policy"], r["ratio"], r["seed"]) for r in runs}
  datasets = {}
  for task in config.tasks:
    for seed in config.seeds:
      policies = config.vit_policies if task == "vit" else config.lm_policies
      todo = [("dense", None)] + [(p, r) for p in policies
                                  for r in config.ratios]
      for policy, ratio in todo:
        if (task, policy, ratio, seed) in done:
          continue
        if task not in datasets:
          datasets[task] = (fashion_mnist(config) if task == "vit" else
                            (lambda tr, te: (*sequences(tr, config.lm_sequence),
                                             *sequences(te, config.lm_sequence)))
                            (*stdlib_bytes(config)))
        runs.append(run(config, task, seed, ratio, datasets[task], policy))
        keras.backend.clear_session()
        save_runs(path, config, runs, summarize, markdown)


if __name__ == "__main__":
  _harness.start(Config, main, QUICK)
