"""Tests of the latency study's bookkeeping (benchmarks/study_latency.py):
paired ratios, the split of a run's wall time, and the report, on
hand-made records whose answers are known."""

import pytest

from benchmarks import study_latency


def run(policy, seed, wall, epochs, acc, prune_epoch=None, **extra):
  record = {"policy": policy, "seed": seed, "train_seconds": wall,
            "epoch_seconds": epochs, "test_accuracy": acc,
            "macs_fraction": 1.0 if policy == "dense" else 0.2}
  if policy == "epi_latency":
    record.update(prune_epoch=prune_epoch, predicted_step_fraction=0.5,
                  step_speedup=1.8, **extra)
  return record


def test_breakdown_splits_wall_time_at_the_prune_epoch():
  # 2 dense epochs (10 s each but the first, 15 s), then 3 pruned epochs
  # of which the first retraces (9 s) and the rest take 5 s; 4 s outside.
  r = run("epi_latency", 0, 53.0, [15.0, 10.0, 9.0, 5.0, 5.0], 0.8, 2)
  parts = study_latency._breakdown(r)
  assert parts["dense_epochs_seconds"] == 25.0
  assert parts["pruned_epochs_seconds"] == 19.0
  assert parts["other_seconds"] == pytest.approx(9.0)
  assert parts["first_pruned_epoch_extra_seconds"] == 4.0
  assert parts["median_dense_epoch"] == 10.0
  assert parts["median_pruned_epoch"] == 5.0
  assert study_latency._breakdown(dict(r, prune_epoch=None)) is None


def test_summary_pairs_runs_of_one_seed():
  runs = [
      run("dense", 0, 100.0, [12.0] + [8.0] * 11, 0.86),
      run("epi_latency", 0, 80.0, [12.0] + [8.0] * 5 + [6.0] + [4.0] * 5,
          0.85, 6),
      run("epi_latency", 1, 60.0, [12.0] + [8.0] * 5 + [6.0] + [4.0] * 5,
          0.80, 6),
      run("dense", 1, 100.0, [12.0] + [8.0] * 11, 0.86),
      run("dense", 2, 50.0, [5.0] * 10, 0.9),  # no pair: left out of ratios
  ]
  s = study_latency.summarize(runs, pipeline_seconds=2.0)
  assert s["pairs"] == 2
  assert s["wall_ratio_median"] == pytest.approx(0.7)
  assert s["wall_ratio_range"] == pytest.approx([0.6, 0.8])
  assert s["accuracy_drop_median"] == pytest.approx(0.035)
  assert s["accuracy_drop_range"] == pytest.approx([0.01, 0.06])
  assert s["prune_epochs"] == [6, 6]
  assert s["predicted_step_speedup_median"] == pytest.approx(2.0)
  assert s["step_speedup_median"] == pytest.approx(1.8)
  assert s["dense_epoch_median"] == 8.0  # the first (tracing) epoch dropped
  assert s["pruned_epoch_median"] == 4.0
  assert s["pipeline_share_of_dense_epoch"] == pytest.approx(0.25)
  assert s["dense_epoch_cpu_median"] is None  # not recorded here
  cpu = dict(runs[1], epoch_cpu_seconds=[20.0] + [15.0] * 6 + [9.0] * 5)
  parts = study_latency._breakdown(cpu)
  assert parts["median_dense_epoch_cpu"] == 15.0  # tracing epoch dropped
  assert parts["median_pruned_epoch_cpu"] == 9.0  # first pruned dropped


def test_markdown_reports_the_summary_and_every_run():
  runs = [run("dense", 0, 100.0, [12.0] + [8.0] * 3, 0.86),
          run("epi_latency", 0, 80.0, [12.0, 8.0, 6.0, 4.0], 0.85, 2)]
  results = {
      "date": "2026-12-01", "machine": {"cpu_model": "cpu", "usable_cpus": 2},
      "settings": {"image_size": 14, "train_examples": 8000, "epochs": 4,
                   "batch_size": 128, "epi_window": 3, "ratio": 0.5,
                   "ratio_asked": 0.5, "reachable_ratio": 0.6,
                   "round_to": 8},
      "table": {"measure_seconds": 50.0, "scale": 0.6, "fixed": 0.01,
                "whole_seconds": 0.1},
      "runs": runs, "summary": study_latency.summarize(runs, 2.0)}
  text = study_latency.markdown(results)
  assert "| wall time, EPI / dense | 0.800" in text
  assert "| 0 | epi_latency | 80.0 | 2 | 0.8500 | 0.200 | 1.80 |" in text
  assert "2.00x / 1.80x" in text
