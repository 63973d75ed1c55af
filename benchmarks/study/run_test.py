"""Tests of the study (run.py): its bookkeeping on hand-made records whose
answers are known, and a tiny study end to end on synthetic data."""

import dataclasses
import json
import math

import pytest

from benchmarks.study import run as study


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
          fixed(1, 0.5, 2, 0.99, 0.9)]  # another seed's: not used
  chosen = study.choose_threshold(runs)["0.5"]
  assert chosen["best_epoch"] == 6
  assert chosen["threshold"] == pytest.approx(0.95)  # EPI after epoch 6
  runs[3]["epi"][5] = math.nan  # undefined EPI (NaN) is not a threshold
  assert study.choose_threshold(runs)["0.5"]["threshold"] == 0.90
  early = [fixed(0, 0.3, 2, 0.90, 0.5),  # best epoch before the window
           fixed(0, 0.3, 6, 0.80, 0.5, [None] * 3 + [0.91, 0.89, 0.95])]
  assert study.choose_threshold(early)["0.3"]["threshold"] == 0.89


def test_summary_means_over_seeds_and_time_ratios():
  dense = [{"policy": "dense", "seed": s, "prune_ratio": None,
            "prune_epoch": None, "test_accuracy": 0.9, "train_seconds": 20.0,
            "macs_dense": 100, "macs_final": 100, "params_final": 4000,
            "throughput": 100.0} for s in (0, 1)]
  runs = dense + [fixed(0, 0.5, 2, 0.8, 0.80), fixed(1, 0.5, 2, 0.8, 0.84)]
  rows = study.summarize(runs)
  row = rows[1]
  assert [r["policy"] for r in rows] == ["dense", "fixed"]
  assert row["test_accuracy"] == pytest.approx(0.82)
  assert row["test_accuracy_std"] == pytest.approx(0.02)
  assert row["time_vs_dense"] == pytest.approx(12.0 / 20.0)
  assert row["macs_fraction"] == pytest.approx(0.5)
  assert row["throughput_vs_dense"] == pytest.approx(2.0)
  assert rows[0]["time_vs_dense"] == pytest.approx(1.0)
  assert "| fixed | 0.5 | 2, 2 | 0.8200 ± 0.0200 |" in study.markdown(
      rows, {"depth": 20, "image_size": 14, "train_examples": 8000,
             "epochs": 12})


def test_epoch_time_after_the_cut_drops_tracing_epochs():
  run = {"policy": "epi", "prune_epoch": 4,
         # epoch 1 traces, epochs 2-4 dense, epoch 5 retraces the pruned model
         "epoch_seconds": [30.0, 5.0, 6.0, 5.0, 20.0, 2.5, 3.0, 2.5]}
  assert study.after_vs_before(run) == pytest.approx(0.5)
  assert study.after_vs_before({**run, "prune_epoch": None}) is None
  assert study.after_vs_before({**run, "policy": "dense"}) is None


def test_a_tiny_study_runs_and_merges(fashion_mnist_dir, tmp_path):
  config = dataclasses.replace(study.Config(), **dict(
      study.QUICK, output_dir=str(tmp_path), work_dir=str(tmp_path / "w"),
      data_dir=fashion_mnist_dir, epochs=2, grid=(1,),
      policies=("dense", "train_prune_finetune", "fixed",
                "epi_validation_tau")))
  study.worker(config)
  with open(tmp_path / "runs" / "runs_seed0.json") as f:
    runs = json.load(f)["runs"]
  assert [(r["policy"], r["prune_epoch"]) for r in runs][:3] == [
      ("dense", None), ("train_prune_finetune", 3), ("fixed", 1)]
  assert runs[2]["macs_final"] < runs[2]["macs_dense"]
  assert len(runs[1]["epoch_seconds"]) == 2 + 2  # dense, then 1 + 1 epochs
  study.merge(config)
  assert (tmp_path / "fashion_mnist_study.png").exists()
  assert "| fixed | 0.5 | 1 |" in (tmp_path / "fashion_mnist_study.md"
                                   ).read_text()
