"""Tests of the latency row's bookkeeping (latency.py) on hand-made records
whose answers are known."""

import pytest

from benchmarks.study import latency


def run(policy, seed, wall, epochs, acc, prune_epoch=None, **extra):
  record = {"policy": policy, "seed": seed, "train_seconds": wall,
            "epoch_seconds": epochs, "test_accuracy": acc,
            "macs_fraction": 1.0 if policy == "dense" else 0.2}
  if policy == "epi_latency":
    record.update(prune_epoch=prune_epoch, predicted_step_fraction=0.5,
                  step_speedup=1.8, **extra)
  return record


def test_breakdown_splits_wall_time_at_the_prune_epoch():
  # 2 dense epochs (the first traces), 3 pruned of which the first retraces
  r = run("epi_latency", 0, 53.0, [15.0, 10.0, 9.0, 5.0, 5.0], 0.8, 2,
          epoch_cpu_seconds=[20.0, 15.0, 12.0, 9.0, 9.0])
  assert latency.breakdown(r) == pytest.approx({
      "dense_epochs_seconds": 25.0, "pruned_epochs_seconds": 19.0,
      "other_seconds": 9.0, "first_pruned_epoch_extra_seconds": 4.0,
      "median_dense_epoch": 10.0, "median_pruned_epoch": 5.0,
      "median_dense_epoch_cpu": 15.0, "median_pruned_epoch_cpu": 9.0})
  assert latency.breakdown(dict(r, prune_epoch=None)) is None


def test_summary_pairs_runs_of_one_seed_and_the_report_shows_them():
  epi = [12.0] + [8.0] * 5 + [6.0] + [4.0] * 5
  runs = [run("dense", 0, 100.0, [12.0] + [8.0] * 11, 0.86),
          run("epi_latency", 0, 80.0, epi, 0.85, 6),
          run("epi_latency", 1, 60.0, epi, 0.80, 6),
          run("dense", 1, 100.0, [12.0] + [8.0] * 11, 0.86),
          run("dense", 2, 50.0, [5.0] * 10, 0.9)]  # no pair: no ratio
  s = latency.summarize(runs, pipeline_seconds=2.0)
  assert s["pairs"] == 2 and s["prune_epochs"] == [6, 6]
  assert s["wall_ratio_median"] == pytest.approx(0.7)
  assert s["wall_ratio_range"] == pytest.approx([0.6, 0.8])
  assert s["accuracy_drop_range"] == pytest.approx([0.01, 0.06])
  assert s["predicted_step_speedup_median"] == pytest.approx(2.0)
  assert s["dense_epoch_median"] == 8.0  # the first (tracing) epoch dropped
  assert s["pruned_epoch_median"] == 4.0
  assert s["pipeline_share_of_dense_epoch"] == pytest.approx(0.25)
  assert s["dense_epoch_cpu_median"] is None  # not recorded here
  text = latency.markdown({
      "date": "2026-12-01", "machine": {}, "runs": runs, "summary": s,
      "settings": {"ratio": 0.5, "reachable_ratio": 0.6},
      "table": {"measure_seconds": 50.0, "scale": 0.6, "fixed": 0.01,
                "whole_seconds": 0.1}})
  assert "| wall time, EPI / dense | 0.700 [0.6, 0.8] |" in text
  assert "| accuracy loss, pt (median per pair) | 3.50 [1.0, 6.0] |" in text
  assert "| 0 | epi_latency | 80.0 | 6 | 0.8500 | 0.200 | 1.80 |" in text
  assert "| training step speed-up, predicted / measured | 2.00x / 1.80x |" in (
      text)
