"""Tests of the medians over repeated runs (run.py --summarize)."""

import json

import pytest

from benchmarks.latency_budget import run


def _run(speedup, error, refused=False):
  plan = {"ratio": 0.5, "error": "at most ratio=0.4"} if refused else {
      "ratio": 0.5, "budget": "latency", "macs_fraction": 0.4,
      "requested_speedup": 2.0, "predicted_speedup": 2.0,
      "measured_speedup": speedup, "relative_error": error,
      "prediction_error": error}
  return {"date": "2026-12-01", "machine": {"cpu_model": "AMD EPYC"},
          "settings": {"batch_size": 8, "training": False, "round_to": 8,
                       "scores": "normalized", "ratios": [0.5]},
          "models": [{"model": "ResNet50", "plans": {"latency_0.5": plan}},
                     {"model": "VGG", "error": "OOM"}]}


def test_medians_ranges_and_refusals_over_runs_in_run_order(tmp_path):
  for k, args in [(1, (2.2, 0.10)), (2, (1.9, -0.05)), (10, (2.0, 0.02)),
                  (3, (0.0, 0.0, True))]:
    (tmp_path / f"batch8_run{k}.json").write_text(json.dumps(_run(*args)))
  (tmp_path / "notes.json").write_text("{}")  # not a run: skipped
  summary = run.summarize(str(tmp_path))
  row = summary["rows"]["batch8"]
  assert summary["machine"] == {"cpu_model": "AMD EPYC"}
  assert row["runs"] == 4 and row["round_to"] == 8
  assert row["models"]["VGG"] == {"failed_runs": 4}
  plan = row["models"]["ResNet50"]["latency_0.5"]
  assert plan["runs"] == 3 and plan["refused"] == 1
  assert plan["measured_speedup"]["values"] == [2.2, 1.9, 2.0]  # 1, 2, 10
  assert plan["measured_speedup"]["median"] == pytest.approx(2.0)
  assert plan["relative_error"]["median"] == pytest.approx(0.02)
  assert plan["requested_speedup"] == 2.0
  assert plan["speedup_miss"]["max"] == pytest.approx(0.1)
  assert plan["refusal"] == "at most ratio=0.4"
  assert ("| ResNet50 | latency_0.5 | 3 (+1 refused) | 0.400 [0.400, 0.400] "
          "| 2.00x | 2.00 [2.00, 2.00] | 2.00 [1.90, 2.20] | "
          "+2.0 [-5.0, +10.0]% | +2.0 [-5.0, +10.0]% | "
          "+0.0 [-5.0, +10.0]% |") in run.summary_markdown(summary)
