"""Tests of benchmarks/latency_budget_summary.py: medians over known runs."""

import json

import pytest

from benchmarks import latency_budget_summary as summary_lib


def _run(speedup, error, refused=False):
  plans = {"dense": {"macs_fraction": 1.0, "measured_speedup": 1.0,
                     "predicted_speedup": 1.0, "relative_error": 0.0,
                     "prediction_error": 0.05}}
  if refused:
    plans["latency_0.5"] = {"ratio": 0.5, "error": "at most ratio=0.4"}
  else:
    plans["latency_0.5"] = {
        "ratio": 0.5, "budget": "latency", "macs_fraction": 0.4,
        "requested_speedup": 2.0, "predicted_speedup": 2.0,
        "measured_speedup": speedup, "relative_error": error,
        "prediction_error": error}
  return {"date": "2026-12-01", "machine": {"cpu_model": "AMD EPYC",
                                            "usable_cpus": 2},
          "settings": {"batch_size": 8, "training": False, "round_to": 8,
                       "scores": "normalized", "ratios": [0.5]},
          "models": [{"model": "ResNet50", "plans": plans}]}


def test_medians_ranges_and_refusals_over_runs(tmp_path):
  for k, (speedup, error, refused) in enumerate(
      [(2.2, 0.10, False), (1.9, -0.05, False), (2.0, 0.02, False),
       (0.0, 0.0, True)], start=1):
    (tmp_path / f"batch8_run{k}.json").write_text(
        json.dumps(_run(speedup, error, refused)))
  (tmp_path / "notes.json").write_text("{}")  # not a run: skipped
  runs = summary_lib.load_runs(str(tmp_path))
  assert list(runs) == ["batch8"] and len(runs["batch8"]) == 4
  row = summary_lib.summarize(runs)["batch8"]
  assert row["runs"] == 4 and row["round_to"] == 8
  plan = row["models"]["ResNet50"]["latency_0.5"]
  assert plan["runs"] == 3 and plan["refused"] == 1
  assert plan["measured_speedup"]["median"] == pytest.approx(2.0)
  assert plan["measured_speedup"]["min"] == pytest.approx(1.9)
  assert plan["measured_speedup"]["max"] == pytest.approx(2.2)
  assert plan["relative_error"]["median"] == pytest.approx(0.02)
  assert plan["requested_speedup"] == 2.0
  assert plan["speedup_miss"]["median"] == pytest.approx(0.0)
  assert plan["speedup_miss"]["max"] == pytest.approx(0.1)
  assert plan["refusal"] == "at most ratio=0.4"
  text = summary_lib.markdown(summary_lib.summarize(runs))
  assert ("| ResNet50 | latency_0.5 | 3 (+1 refused) | 0.400 [0.400, 0.400] "
          "| 2.00x | 2.00 [2.00, 2.00] | 2.00 [1.90, 2.20] | "
          "+2.0 [-5.0, +10.0]% | +2.0 [-5.0, +10.0]% | "
          "+0.0 [-5.0, +10.0]% |") in text


def test_runs_are_ordered_by_their_number(tmp_path):
  for k, speedup in ((10, 3.0), (2, 2.0)):
    (tmp_path / f"row_run{k}.json").write_text(json.dumps(_run(speedup, 0)))
  runs = summary_lib.load_runs(str(tmp_path))
  assert [r["models"][0]["plans"]["latency_0.5"]["measured_speedup"]
          for r in runs["row"]] == [2.0, 3.0]
