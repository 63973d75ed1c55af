"""What cutting a ViT's model width costs, and what training on gives back.

  python -m benchmarks.transformers.width            # results/, ~10 min/seed
  python -m benchmarks.transformers.width --quick    # to a scratch directory

`through_norms=True` makes the model width (patch embedding, class token,
position table, residual stream, LayerNormalization scales) a channel group;
the cut is approximate, as a cut LayerNormalization normalises over the kept
channels. EPI's global ranking decides whether to cut it; this study cuts it
on purpose, alone, to measure the approximation: per seed, the study's ViT
(run.py) is trained dense for half its epochs; then its width is cut to each
fraction (the channels of largest magnitude kept), and each cut model is
measured at once (test accuracy, largest output difference relative to the
largest dense output) and after training on for the other half of the
epochs (a fresh optimizer: plain `fit` on the pruned model), beside the
dense model trained on in the same way (fraction 1.0).
"""

import dataclasses
import os

from absl import logging
import keras
import numpy as np

from benchmarks import _harness
from benchmarks.transformers import run as study
import keras_epi


@dataclasses.dataclass(frozen=True)
class Config(study.Config):
  fractions: tuple = (1.0, 0.75, 0.5)
  output_dir: str = "benchmarks/transformers/results"
  quick: bool = _harness.flag(False, "Smoke run: tiny data and model, to a "
                              "scratch directory.")


QUICK = dict(study.QUICK, output_dir=_harness.scratch("transformers_width"),
             fractions=(1.0, 0.5))


def width_group(model):
  """The model width's group (the stream: residual, through the norms)."""
  return next(g for g in keras_epi.channel_groups(model, through_norms=True)
              if g.residual)


def run_seed(config, seed, data):
  """The records of one seed: one per width fraction."""
  x, y, x_test, y_test = data
  keras.utils.set_random_seed(seed)
  half = config.vit_epochs // 2
  model = study.vit(config)
  model.fit(x, y, batch_size=config.batch_size, epochs=half, verbose=0)
  group = width_group(model)
  scores = keras_epi.magnitude_importance(model, [group])[group.name]
  dense_logits = model.predict(x_test, batch_size=256, verbose=0)
  dense_macs = keras_epi.count_macs(model, input_shape=(28, 28, 1))
  records = []
  for fraction in config.fractions:
    kept = int(round(fraction * group.size))
    keep = {group.name: np.sort(np.argsort(-scores, kind="stable")[:kept])}
    cut = (keras_epi.prune_model(model, keep, through_norms=True)
           if kept < group.size else study.vit(config))
    if kept == group.size:  # the control: the dense model trained on
      cut.set_weights(model.get_weights())
    logits = cut.predict(x_test, batch_size=256, verbose=0)
    record = {
        "seed": seed, "width_fraction": fraction, "width": kept,
        "width_dense": group.size, "dense_epochs": half,
        "macs_fraction": keras_epi.count_macs(
            cut, input_shape=(28, 28, 1)) / dense_macs,
        "params": cut.count_params(),
        "accuracy_dense_at_cut": _accuracy(dense_logits, y_test),
        "accuracy_at_cut": _accuracy(logits, y_test),
        "relative_output_difference": float(
            np.abs(logits - dense_logits).max() /
            np.abs(dense_logits).max()),
    }
    cut.compile(
        optimizer=keras.optimizers.AdamW(config.vit_learning_rate),
        loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True),
        metrics=["accuracy"])
    keras.utils.set_random_seed(seed + 1000)
    cut.fit(x, y, batch_size=config.batch_size,
            epochs=config.vit_epochs - half, verbose=0)
    record["accuracy_after_training_on"] = _accuracy(
        cut.predict(x_test, batch_size=256, verbose=0), y_test)
    logging.info("width %.2f seed %d: %s", fraction, seed, record)
    records.append(record)
  return records


def _accuracy(logits, y):
  return float(np.mean(np.argmax(logits, -1) == y))


def summarize(runs):
  """Per width fraction: means and spreads over seeds."""
  out = []
  for fraction in sorted({r["width_fraction"] for r in runs}, reverse=True):
    of = [r for r in runs if r["width_fraction"] == fraction]
    row = {"width_fraction": fraction, "seeds": [r["seed"] for r in of],
           "width": of[0]["width"], "macs_fraction": of[0]["macs_fraction"],
           "params": of[0]["params"]}
    for key in ("accuracy_dense_at_cut", "accuracy_at_cut",
                "relative_output_difference", "accuracy_after_training_on"):
      values = [r[key] for r in of]
      row[key], row[key + "_std"] = float(np.mean(values)), float(
          np.std(values))
    out.append(row)
  return out


def markdown(results):
  c = results["config"]
  rows = [[f"{r['width_fraction']:.2f}", str(r["width"]),
           f"{r['macs_fraction']:.3f}", f"{r['params']:,}",
           f"{r['accuracy_dense_at_cut']:.4f}",
           f"{r['accuracy_at_cut']:.4f} ± {r['accuracy_at_cut_std']:.4f}",
           f"{r['relative_output_difference']:.3f}",
           f"{r['accuracy_after_training_on']:.4f} ± "
           f"{r['accuracy_after_training_on_std']:.4f}"]
          for r in results["summary"]]
  return "\n".join([
      "# Cutting a ViT's model width (through_norms=True)", "",
      _harness.machine_line(results), "",
      f"The ViT of run.py ({c['vit_layers']} layers, width {c['vit_width']})"
      f" trained dense for {c['vit_epochs'] // 2} of {c['vit_epochs']} "
      "epochs, its width cut (largest magnitudes kept), then trained on for "
      f"{c['vit_epochs'] - c['vit_epochs'] // 2} epochs (fresh AdamW); "
      "fraction 1.00 is the dense model trained on the same way. Means ± "
      f"spread over seeds {list(c['seeds'])}; accuracy on the 10,000 test "
      "images. Setup: benchmarks/transformers/README.md.", "",
      *_harness.table(["width kept", "width", "MACs", "params",
                       "dense at the cut", "cut, before training on",
                       "largest output difference (relative)",
                       "after training on"], rows)]) + "\n"


def main(config):
  path = os.path.join(config.output_dir, "width.json")
  runs = study.load_runs(path)
  data = study.fashion_mnist(config)
  for seed in config.seeds:
    if any(r["seed"] == seed for r in runs):
      continue
    runs += run_seed(config, seed, data)
    keras.backend.clear_session()
    study.save_runs(path, config, runs, summarize, markdown)


if __name__ == "__main__":
  _harness.start(Config, main, QUICK)
