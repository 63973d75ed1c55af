"""What an EPI run cost: wall-clock time by phase, measured as it runs.

`TrainingCost` is `EPICallback.training_cost`'s record. Every second from
the first epoch's start to the end of training falls into exactly one part:
an epoch before the cut (``dense_seconds``), an epoch after it
(``pruned_seconds``), the callback's epoch-end scoring and planning
(``scoring_seconds``; the per-step Taylor terms run inside the train steps,
so they are part of the epochs), or the cut itself (``prune_seconds``:
surgery, masking and, in `keras_epi.fit`, compiling the pruned model and
carrying the optimizer state over). What lies outside the epochs (Keras'
set-up of a fit, callbacks after the last epoch and, in `keras_epi.fit`,
everything until it returns) is ``other_seconds``, so the parts add up to
``total_seconds``.
"""

import contextlib
import time

import numpy as np

PARTS = ("scoring", "prune")


class TrainingCost:
  """Wall-clock seconds of one run, by phase.

  Args:
    clock: Seconds as a float (`time.perf_counter`; a fake one in tests).
  """

  def __init__(self, clock=time.perf_counter):
    self._clock = clock
    self.reset()

  def reset(self):
    self._start = self._end = None
    self._epoch_start = None
    self._epoch_pruned = False
    self._inside = 0.0  # part seconds inside the open epoch
    self.epoch_seconds = []  # (seconds, pruned) per epoch
    self.parts = {part: 0.0 for part in PARTS}

  def start(self, at=None):
    """The run begins, now or at `at` (a time of the record's clock, e.g.
    when `keras_epi.fit` was called); the first call counts, as a run may
    span fits."""
    if self._start is None:
      self._start = self._clock() if at is None else at

  def epoch_begin(self, pruned):
    """An epoch begins; `pruned`: it trains after the cut."""
    self.start()
    self._close_epoch()
    self._epoch_start, self._epoch_pruned = self._clock(), bool(pruned)
    self._inside = 0.0

  def stop(self):
    """Training ends (again, if a later fit continues the run)."""
    self._close_epoch()
    self._end = self._clock()

  @contextlib.contextmanager
  def timed(self, part):
    """Counts the body's seconds as `part` ("scoring" or "prune")."""
    begin = self._clock()
    try:
      yield
    finally:
      seconds = self._clock() - begin
      self.parts[part] += seconds
      if self._epoch_start is not None:
        self._inside += seconds

  def _close_epoch(self):
    if self._epoch_start is not None:
      seconds = self._clock() - self._epoch_start - self._inside
      self.epoch_seconds.append((seconds, self._epoch_pruned))
      self._epoch_start = None

  def as_dict(self):
    """The record as plain data (seconds; lists per epoch). Empty before
    the run starts."""
    if self._start is None:
      return {}
    end = self._end if self._end is not None else self._clock()
    total = end - self._start
    dense = [s for s, pruned in self.epoch_seconds if not pruned]
    after = [s for s, pruned in self.epoch_seconds if pruned]
    counted = sum(dense) + sum(after) + sum(self.parts.values())
    return {
        "total_seconds": total,
        "dense_seconds": float(sum(dense)),
        "pruned_seconds": float(sum(after)),
        "scoring_seconds": self.parts["scoring"],
        "prune_seconds": self.parts["prune"],
        "other_seconds": total - counted,
        "epoch_seconds": [float(s) for s, _ in self.epoch_seconds],
        "dense_epochs": len(dense),
        "pruned_epochs": len(after),
        # The run's cost in epochs of the dense model: its time over the
        # median dense epoch (the median, so that the first epoch's tracing
        # does not set the unit).
        "dense_equivalent_epochs": (float(total / np.median(dense))
                                    if dense else None),
    }
