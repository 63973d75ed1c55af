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
  assert len(runs) == 1 + 2 * (7 + 2)  # 7 policies and 2 grid epochs
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


def test_time_in_own_dense_epochs_cancels_a_host_that_got_faster():
  # The dense run: epochs of 2 s (the first, tracing, left out): 50 units.
  dense = dict(_run("dense", 0, wall=100.0), epoch_seconds=[9] + [2] * 29)
  # The same work later on a host twice as fast: half the wall time, the
  # same units; a run pruned after 4 epochs of 1 s, in 30 units.
  same = dict(_run("epi", 0, 0.7, wall=50.0, prune_epoch=30),
              epoch_seconds=[5] + [1] * 29)
  pruned = dict(_run("epi", 0, 0.5, wall=30.0, prune_epoch=4),
                epoch_seconds=[5, 1, 1, 1] + [0.5] * 26)
  early = dict(_run("fixed", 0, 0.5, 0, wall=30.0, prune_epoch=0),
               epoch_seconds=[5] + [1] * 29)
  rows = {(r["policy"], r["ratio"]): r for r in schedule.summarize(
      [dense, same, pruned, early])}
  assert rows["epi", 0.7]["time_vs_dense"]["median"] == pytest.approx(0.5)
  assert rows["epi", 0.7]["dense_epochs_vs_dense"]["median"] == (
      pytest.approx(1.0))
  assert rows["epi", 0.5]["dense_epochs_vs_dense"]["median"] == (
      pytest.approx(30 / 50))
  assert rows["fixed", 0.5]["dense_epochs_vs_dense"] is None  # no unit


def test_the_grids_best_epoch_is_set_against_epis_per_seed():
  runs = [_run("fixed", 0, 0.5, k, accuracy=a, prune_epoch=k)
          for k, a in ((0, 0.70), (3, 0.82), (6, 0.81))]
  runs.append(_run("epi", 0, 0.5, prune_epoch=5))
  choice = schedule.grid_choice(runs)["0.5"]["0"]
  assert choice["grid_best_epoch"] == 3 and choice["epi_epoch"] == 5
  assert choice["epi_macs_epoch"] is None
  assert choice["grid_source"] == "this set"


def test_a_seed_without_a_grid_takes_it_from_the_other_set():
  runs = [_run("fixed", 0, 0.5, 3, accuracy=0.8, prune_epoch=3),
          _run("epi", 1, 0.5, prune_epoch=4, accuracy=0.83)]
  other = [_run("fixed", 1, 0.5, k, accuracy=a, prune_epoch=k)
           for k, a in ((0, 0.84), (6, 0.81))]
  other.append(_run("fixed", 0, 0.5, 6, accuracy=0.9, prune_epoch=6))
  choice = schedule.grid_choice(runs, other)["0.5"]
  # Seed 0 has its own grid: the other set's better epoch is not mixed in.
  assert (choice["0"]["grid_best_epoch"], choice["0"]["grid_source"]) == (
      3, "this set")
  assert choice["1"]["grid_best_epoch"] == 0
  assert choice["1"]["grid_source"] == "grid_from"
  assert (choice["1"]["epi_epoch"], choice["1"]["epi_accuracy"]) == (4, 0.83)


def test_the_deadline_policies_prune_by_it_on_a_pipeline_without_autotune(
    fashion_mnist_dir, tmp_path):
  # A window of 5 cannot fire before epoch 5: what prunes after the first
  # epoch is the deadline.
  config = dataclasses.replace(schedule.Config(), **dict(
      schedule.QUICK, output_dir=str(tmp_path), work_dir=str(tmp_path / "w"),
      data_dir=fashion_mnist_dir, epochs=2, prune_by=1, epi_window=5,
      policies=("epi_deadline",), threads=0))  # TF is running already
  assert not config.autotune
  study = schedule.study_lib.Study(config, 0)
  assert study.train().options().autotune.enabled is False
  schedule.worker(config)
  with open(tmp_path / "runs" / "runs_seed0.json") as f:
    saved = json.load(f)
  (run,) = saved["runs"]
  assert (run["policy"], run["prune_epoch"]) == ("epi_deadline", 1)
  assert run["prune_reason"] == "deadline" and run["macs_fraction"] < 1.0
  assert saved["config"]["prune_by"] == 1
  assert saved["config"]["autotune"] is False
