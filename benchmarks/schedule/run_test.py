"""Tests of the schedule study (run.py): the runs it plans and resumes, and
its summary on hand-made records whose answers are known."""

import dataclasses
import json

import pytest

from benchmarks.schedule import run as schedule


def _run(policy, seed, ratio=None, k=None, wall=100.0, accuracy=0.8,
         prune_epoch=None, epochs=None):
  return {"policy": policy, "seed": seed, "prune_ratio": ratio,
          "fixed_epoch": k, "wall_seconds": wall, "test_accuracy": accuracy,
          "prune_epoch": prune_epoch, "macs_fraction": 0.5,
          "training_cost": {"epoch_seconds": epochs or [],
                            "dense_epochs": prune_epoch}}


def test_planned_runs_put_dense_first_and_cover_every_policy_and_ratio():
  config = dataclasses.replace(schedule.Config(), ratios=(0.5, 0.7),
                               grid=(0, 3))
  runs = schedule.planned_runs(config)
  assert runs[0] == ("dense", None, None)
  assert len(runs) == 1 + 2 * (5 + 2)  # 5 policies and 2 grid epochs
  assert ("fixed", 0.7, 3) in runs and ("epi_latency", 0.5, None) in runs
  assert len(set(runs)) == len(runs)


def test_a_part_skips_the_runs_of_the_seeds_other_files(tmp_path):
  runs_dir = tmp_path / "runs"
  runs_dir.mkdir()
  for name, records in (
      ("runs_seed2.json", [_run("dense", 2), _run("epi", 2, 0.5)]),
      ("runs_seed2-b.json", [_run("fixed", 2, 0.7, 3)]),
      ("runs_seed12.json", [_run("early_bird", 12, 0.7)])):
    (runs_dir / name).write_text(json.dumps({"runs": records}))
  config = dataclasses.replace(
      schedule.Config(), output_dir=str(tmp_path), ratios=(0.7,),
      grid=(3, 6), policies=("fixed", "early_bird"), part="b")
  path, own, seen, todo = schedule.pending_runs(config, 2)
  assert path == str(runs_dir / "runs_seed2-b.json") and len(own) == 1
  assert len(seen) == 3  # seed 12's file is not seed 2's
  assert todo == [("early_bird", 0.7, None), ("fixed", 0.7, 6)]
  config = dataclasses.replace(config, part="", policies=("dense", "epi"),
                               ratios=(0.5,))
  assert schedule.pending_runs(config, 2)[3] == []


def test_time_is_over_the_same_seeds_dense_and_tpf_runs():
  runs = [_run("dense", 0, wall=100.0), _run("dense", 1, wall=200.0),
          _run("train_prune_finetune", 0, 0.5, wall=130.0),
          _run("train_prune_finetune", 1, 0.5, wall=260.0),
          _run("epi", 0, 0.5, wall=60.0, prune_epoch=6,
               epochs=[4, 2, 2, 2, 2, 2, 9, 1, 1, 1]),
          _run("epi", 1, 0.5, wall=140.0, prune_epoch=9, accuracy=0.6)]
  rows = {r["policy"]: r for r in schedule.summarize(runs)}
  epi = rows["epi"]
  assert epi["time_vs_dense"]["median"] == pytest.approx((0.6 + 0.7) / 2)
  assert epi["time_vs_dense"]["min"] == pytest.approx(0.6)
  assert epi["time_vs_train_prune_finetune"]["max"] == pytest.approx(
      140 / 260)
  assert epi["test_accuracy"]["mean"] == pytest.approx(0.7)
  assert epi["prune_epochs"] == [6, 9]
  # Seed 0: pruned epochs (first dropped) 1 s against dense ones 2 s.
  assert epi["pruned_epoch_vs_dense_epoch"]["min"] == pytest.approx(0.5)


def test_the_grids_best_epoch_is_set_against_epis_per_seed():
  runs = [_run("fixed", 0, 0.5, k, accuracy=a, prune_epoch=k)
          for k, a in ((0, 0.70), (3, 0.82), (6, 0.81))]
  runs.append(_run("epi", 0, 0.5, prune_epoch=5))
  choice = schedule.grid_choice(runs)["0.5"]["0"]
  assert choice["grid_best_epoch"] == 3 and choice["epi_epoch"] == 5
  assert choice["epi_macs_epoch"] is None
