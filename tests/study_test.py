"""Tests of the study's bookkeeping (benchmarks/study.py): the threshold
chosen on the validation split and the per-policy summary, on hand-made
records whose answers are known."""

import pytest

from benchmarks import study


def fixed(seed, ratio, k, val, test, epi=None):
  return {"policy": "fixed", "seed": seed, "prune_ratio": ratio,
          "fixed_epoch": k, "prune_epoch": k, "validation_accuracy": val,
          "test_accuracy": test, "epi": epi or [None] * k,
          "train_seconds": 10.0 + k, "macs_dense": 100, "macs_final": 50,
          "params_final": 1000, "throughput": 200.0}


def test_threshold_is_epi_at_the_validation_best_epoch():
  curve = [None, None, None, 0.90, 0.93, 0.95, 0.96, 0.97]
  runs = [fixed(0, 0.5, 0, 0.80, 0.1), fixed(0, 0.5, 2, 0.82, 0.9),
          fixed(0, 0.5, 6, 0.85, 0.2), fixed(0, 0.5, 8, 0.84, 0.3, curve),
          # Another seed's better validation score must not be used.
          fixed(1, 0.5, 2, 0.99, 0.9)]
  chosen = study.choose_threshold(runs)["0.5"]
  assert chosen["best_epoch"] == 6
  assert chosen["threshold"] == pytest.approx(0.95)  # EPI after epoch 6


def test_threshold_before_the_window_fires_as_early_as_possible():
  curve = [None, None, None, 0.91, 0.89, 0.95]
  runs = [fixed(0, 0.3, 2, 0.90, 0.5), fixed(0, 0.3, 6, 0.80, 0.5, curve)]
  chosen = study.choose_threshold(runs)["0.3"]
  assert chosen["best_epoch"] == 2
  assert chosen["threshold"] == pytest.approx(0.89)


def test_summary_means_over_seeds_and_time_ratios():
  dense = [{"policy": "dense", "seed": s, "prune_ratio": None,
            "prune_epoch": None, "test_accuracy": 0.9, "train_seconds": 20.0,
            "macs_dense": 100, "macs_final": 100, "params_final": 4000,
            "throughput": 100.0} for s in (0, 1)]
  runs = dense + [fixed(0, 0.5, 2, 0.8, 0.80), fixed(1, 0.5, 2, 0.8, 0.84)]
  rows = {(r["policy"], r["fixed_epoch"]): r for r in study.summarize(runs)}
  row = rows[("fixed", 2)]
  assert row["test_accuracy"] == pytest.approx(0.82)
  assert row["test_accuracy_std"] == pytest.approx(0.02)
  assert row["time_vs_dense"] == pytest.approx(12.0 / 20.0)
  assert row["macs_fraction"] == pytest.approx(0.5)
  assert row["throughput_vs_dense"] == pytest.approx(2.0)
  assert rows[("dense", None)]["time_vs_dense"] == pytest.approx(1.0)
  assert "| fixed | 0.5 | 2, 2 | 0.8200 ± 0.0200 |" in study.markdown(
      list(rows.values()), {"depth": 20, "image_size": 14,
                            "train_examples": 8000, "epochs": 12})


def test_epoch_time_after_the_cut_drops_tracing_epochs():
  run = {"policy": "epi", "prune_epoch": 4,
         # epoch 1 traces, epochs 2-4 dense, epoch 5 retraces the pruned model
         "epoch_seconds": [30.0, 5.0, 6.0, 5.0, 20.0, 2.5, 3.0, 2.5]}
  assert study._after_vs_before(run) == pytest.approx(0.5)
  assert study._after_vs_before({**run, "prune_epoch": None}) is None
  assert study._after_vs_before({**run, "policy": "dense"}) is None
