"""Tests of keras_epi.cost: a run's time by phase, on a fake clock and in a
real keras_epi.fit."""

import time

import keras
import pytest

import keras_epi
from keras_epi import cost as cost_lib
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


class _Clock:

  def __init__(self):
    self.now = 0.0

  def __call__(self):
    return self.now

  def advance(self, seconds):
    self.now += seconds


def test_parts_by_hand():
  clock = _Clock()
  cost = cost_lib.TrainingCost(clock)
  assert cost.as_dict() == {}
  cost.start()
  clock.advance(1.0)  # fit set-up: other
  for seconds in (10.0, 8.0):  # two dense epochs, 1 s of scoring each
    cost.epoch_begin(pruned=False)
    clock.advance(seconds - 1.0)
    with cost.timed("scoring"):
      clock.advance(1.0)
  with cost.timed("prune"):  # the cut, inside the second epoch's end
    clock.advance(3.0)
  cost.stop()
  with cost.timed("prune"):  # compiling the cut model, between fits
    clock.advance(2.0)
  for _ in range(3):
    cost.epoch_begin(pruned=True)
    clock.advance(4.0)
  cost.stop()
  record = cost.as_dict()
  assert record["epoch_seconds"] == [9.0, 7.0, 4.0, 4.0, 4.0]
  assert record["dense_seconds"] == 16.0 and record["pruned_seconds"] == 12.0
  assert record["scoring_seconds"] == 2.0 and record["prune_seconds"] == 5.0
  assert record["total_seconds"] == 36.0 and record["other_seconds"] == 1.0
  assert record["dense_epochs"] == 2 and record["pruned_epochs"] == 3
  # 36 s over the median dense epoch (8 s).
  assert record["dense_equivalent_epochs"] == pytest.approx(36.0 / 8.0)


def test_a_fit_records_every_epoch_and_its_parts_add_up():
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=2)
  keras_epi.fit(model, x, y, epochs=4, batch_size=32, verbose=0,
                callbacks=[cb])
  record = cb.training_cost
  assert record["dense_epochs"] == 2 and record["pruned_epochs"] == 2
  assert len(record["epoch_seconds"]) == 4
  assert record["prune_seconds"] > 0 and record["scoring_seconds"] > 0
  parts = (record["dense_seconds"] + record["pruned_seconds"] +
           record["prune_seconds"] + record["scoring_seconds"])
  assert parts + record["other_seconds"] == pytest.approx(
      record["total_seconds"])
  # What lies outside the epochs and the cut (Keras' set-up of the two
  # fits) is a small share of the run.
  assert 0 <= record["other_seconds"] <= 0.25 * record["total_seconds"]


class _SlowEnd(keras.callbacks.Callback):
  """Keras' work after the last epoch, stood in for by a callback that runs
  after the EPICallback's `on_train_end` (keras_epi.fit puts it first)."""

  def on_train_end(self, logs=None):
    time.sleep(0.5)


@pytest.mark.parametrize("prune_epoch", [2, 9])  # pruned, never pruned
def test_the_record_covers_keras_epi_fit_until_it_returns(prune_epoch):
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                             prune_epoch=prune_epoch)
  start = time.perf_counter()
  keras_epi.fit(model, x, y, epochs=3, batch_size=32, verbose=0,
                callbacks=[cb, _SlowEnd()])
  wall = time.perf_counter() - start
  record = cb.training_cost
  assert record["other_seconds"] >= 0.5  # the slow end is in the record
  assert record["total_seconds"] <= wall
  assert record["total_seconds"] == pytest.approx(wall, rel=0.02)
