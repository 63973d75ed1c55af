"""Tests of the transformer study (run.py): its data and summary."""

import numpy as np
import pytest

from benchmarks.transformers import run as transformers


def test_sequences_predict_the_next_byte():
  x, y = transformers.sequences(np.arange(20), 4)
  np.testing.assert_array_equal(x["token_ids"][1], [4, 5, 6, 7])
  np.testing.assert_array_equal(y[1], [5, 6, 7, 8])
  assert x["token_ids"].shape == (4, 4) and x["padding_mask"].all()


def test_summary_is_over_seeds_and_against_the_same_seeds_dense_run():
  runs = [
      {"task": "vit", "policy": "dense", "ratio": None, "seed": s,
       "test_accuracy": 0.8, "prune_epoch": None, "macs_fraction": 1.0,
       "params": 100, "wall_seconds": 10.0 * (s + 1), "widths": None}
      for s in (0, 1)] + [
      {"task": "vit", "policy": "epi", "ratio": 0.5, "seed": s,
       "test_accuracy": a, "prune_epoch": 3, "macs_fraction": 0.6,
       "params": 60, "wall_seconds": 8.0 * (s + 1), "latency_ratio": 0.7,
       "widths": {"a:heads": 2}} for s, a in ((0, 0.78), (1, 0.74))]
  rows = {r["ratio"]: r for r in transformers.summarize(runs)}
  assert rows[0.5]["test_accuracy"] == pytest.approx(0.76)
  assert rows[0.5]["test_accuracy_std"] == pytest.approx(0.02)
  assert rows[0.5]["time_vs_dense"] == pytest.approx(0.8)
  assert rows[None]["time_vs_dense"] == pytest.approx(1.0)


def test_width_summary_is_per_fraction_over_seeds():
  from benchmarks.transformers import width  # pylint: disable=g-import-not-at-top
  runs = [{"seed": s, "width_fraction": f, "width": int(64 * f),
           "macs_fraction": f, "params": 10, "accuracy_dense_at_cut": 0.8,
           "accuracy_at_cut": 0.8 if f == 1.0 else 0.4 + 0.1 * s,
           "relative_output_difference": 0.0 if f == 1.0 else 1.0,
           "accuracy_after_training_on": 0.85 - 0.01 * s}
          for s in (0, 1) for f in (1.0, 0.5)]
  rows = {r["width_fraction"]: r for r in width.summarize(runs)}
  assert list(rows) == [1.0, 0.5] and rows[0.5]["width"] == 32
  assert rows[0.5]["accuracy_at_cut"] == pytest.approx(0.45)
  assert rows[0.5]["accuracy_at_cut_std"] == pytest.approx(0.05)
  assert rows[1.0]["accuracy_after_training_on"] == pytest.approx(0.845)
  assert "0.4500 ± 0.0500" in width.markdown({
      "summary": width.summarize(runs), "config": {
          "vit_layers": 4, "vit_width": 64, "vit_epochs": 12, "seeds": [0, 1]},
      "date": "d", "machine": {}})
