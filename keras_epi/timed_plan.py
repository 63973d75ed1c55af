"""A latency plan corrected by timing it on this machine: the planner's
budget, closed by measurement (`select_channels_timed`)."""

from absl import logging
import numpy as np

from keras_epi import _validation as validation
from keras_epi import budget as budget_lib
from keras_epi import graph


def select_channels_timed(model, scores, ratio, latency_table, *, passes=3,
                          tolerance=0.03, ignore=(), min_channels=1,
                          round_to=1, keep_stem=True, keep_residual=False,
                          repeats=None):
  """A latency plan whose measured speed-up is the one asked for.

  `select_channels` with ``budget="latency"`` meets the table's *predicted*
  latency; on a real machine the plan may run a few percent faster or
  slower than predicted (the table is a sum of layers timed alone, and a
  plan's mix of widths differs from the uniform cuts it was calibrated on).
  This closes the loop: plan, build the pruned model and time it against
  the dense one in alternating rounds (`LatencyTable.time_plan`), and while
  the measured fraction of the dense time misses ``1 - ratio`` by more than
  `tolerance` (relative), plan again for a corrected predicted target.

  The correction is one factor between the table and this machine: ``c``,
  the median over the timed plans of measured / predicted fraction. Each
  plan's *estimated* fraction is ``c * predicted``, and the next plan asks
  the table for ``t / c`` of the dense time (``t = 1 - ratio``; clipped to
  what `max_latency_ratio` allows). It stops when the last plan's estimate
  is within tolerance of ``t``, a plan repeats, or after `passes` timed
  plans, and returns the plan whose estimate is closest to ``t``. This is a
  choice: on a shared CPU two builds of the same plan, timed in the same
  rounds, can differ by 5-10%, so a median factor over plans is steadier
  than any one measurement, and choosing the plan with the luckiest
  measurement would promise a speed-up that a second timing does not
  repeat. A target missed by more than `tolerance` is logged as a warning;
  the passes are returned so that a caller can check.

  Each pass costs one surgery and ``2 * max(2 * repeats, 7) * 4`` model
  calls at the table's batch size (about 20 s for ResNet50 at batch 8 on
  two CPU cores). The timings are as noisy as the machine: on a shared
  host, medians still move by several percent from run to run.

  Args:
    model: The dense model the table was measured on.
    scores, ignore, min_channels, round_to, keep_stem, keep_residual: As in
      `select_channels`.
    ratio: Fraction of the measured latency to remove, in (0, 1):
      ``ratio=0.5`` asks for a measured 2x.
    latency_table: A `keras_epi.LatencyTable` measured on `model`, on this
      machine (its batch size and mode are the ones timed).
    passes: Timed plans at most (>= 1); 1 only measures the table's plan.
    tolerance: Relative miss of the measured fraction accepted, in (0, 1).
    repeats: `LatencyTable.time_plan`'s rounds; default: the table's.

  Returns:
    ``(keep, passes)``: the plan, and per timed plan a dict with
    ``planned_ratio`` (the ratio given to the table), ``widths`` ({group:
    kept count}), ``predicted_fraction``, ``measured_fraction`` and
    ``measured_quartiles``, ``estimated_fraction`` (with the final factor),
    ``dense_seconds``, ``pruned_seconds`` and ``chosen`` (True for the plan
    returned).

  Raises:
    ValueError: for a bad argument (as `select_channels`, and `passes`,
      `tolerance`), or a table that cannot time (see `time_plan`).

  Example:

  ```python
  table = keras_epi.LatencyTable.measure(model, batch_size=8, round_to=8)
  keep, passes = keras_epi.select_channels_timed(model, scores, 0.5, table,
                                                 round_to=8)
  [p["estimated_fraction"] for p in passes if p["chosen"]]   # about [0.5]
  ```
  """
  budget_lib.check_arguments(ratio, "latency", min_channels, round_to,
                             latency_table)
  passes = validation.integer("passes", passes, 1)
  tolerance = validation.number("tolerance", tolerance, "(0, 1)")
  options = dict(min_channels=min_channels, round_to=round_to,
                 keep_stem=keep_stem, keep_residual=keep_residual)
  analysis = graph.analyze(model, ignore)
  reachable = budget_lib.max_latency_ratio_of(analysis, latency_table,
                                              **options)
  target = 1.0 - ratio
  planned = min(ratio, reachable)
  records, keeps = [], []
  for _ in range(passes):
    keep = budget_lib.plan_channels(analysis, scores, planned, budget="latency",
                         latency_table=latency_table, **options)
    widths = {name: len(k) for name, k in keep.items()}
    if any(r["widths"] == widths for r in records):
      break  # the table's grid gives no other plan for this target
    timing = latency_table.time_plan(model, keep, ignore=ignore,
                                     repeats=repeats)
    records.append(dict(planned_ratio=planned, widths=widths, **timing))
    keeps.append(keep)
    factor = float(np.median([r["measured_fraction"] /
                              r["predicted_fraction"] for r in records]))
    for record in records:
      record["estimated_fraction"] = factor * record["predicted_fraction"]
    logging.info("select_channels_timed: ratio %.4f planned, %.4f of the "
                 "dense time predicted, %.4f measured, %.4f estimated "
                 "(asked %.4f).", planned, timing["predicted_fraction"],
                 timing["measured_fraction"], records[-1][
                     "estimated_fraction"], target)
    if abs(records[-1]["estimated_fraction"] - target) <= tolerance * target:
      break
    planned = float(np.clip(1.0 - target / factor, 1e-4, reachable))
  best = min(range(len(records)),
             key=lambda i: abs(records[i]["estimated_fraction"] - target))
  for i, record in enumerate(records):
    record["chosen"] = i == best
  miss = records[best]["estimated_fraction"] / target - 1.0
  if abs(miss) > tolerance:
    logging.warning(
        "select_channels_timed: ratio=%g asks for %.4f of the dense time; "
        "the closest of %d timed plan(s) is estimated at %.4f (%+.1f%%; "
        "measured %.4f; the table allows at most ratio=%g with these "
        "settings).", ratio, target, len(records),
        records[best]["estimated_fraction"], 100 * miss,
        records[best]["measured_fraction"], reachable)
  return keeps[best], records
