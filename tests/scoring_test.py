"""Tests of keras_epi.scoring.Scoring: the scores of an interval."""

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import scoring as scoring_lib
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def test_magnitude_scores_are_the_filter_norms_and_need_no_steps():
  model = make_model()
  groups = keras_epi.channel_groups(model)
  scoring = scoring_lib.Scoring(model, groups, "magnitude")
  assert not scoring.needs_steps
  scores = scoring.scores(0)
  want = keras_epi.magnitude_importance(model, groups)
  for name in want:
    np.testing.assert_array_equal(scores[name], want[name])
  scoring.stop()


def test_taylor_scores_come_from_the_steps_and_restart_each_interval():
  model = make_model()
  groups = keras_epi.channel_groups(model)
  scoring = scoring_lib.Scoring(model, groups, "taylor")
  assert scoring.needs_steps
  assert scoring.scores(0) is None  # no step seen yet

  x, y = make_data(64)

  class Grant(keras.callbacks.Callback):

    def on_train_batch_begin(self, batch, logs=None):
      scoring.step()

  model.fit(x, y, batch_size=32, epochs=1, verbose=0, callbacks=[Grant()])
  scores = scoring.scores(0)
  assert set(scores) == {g.name for g in groups}
  assert all(np.isfinite(v).all() and (v >= 0).all() for v in
             scores.values())
  assert any(v.sum() > 0 for v in scores.values())
  assert scoring.scores(1) is None  # a new interval, nothing seen yet
  scoring.stop()
  assert scoring.skipped == 0


@pytest.mark.parametrize("values, finite", [
    ({"a": np.ones(3)}, True), ({"a": np.array([1.0, np.nan])}, False),
    ({"a": np.ones(2), "b": np.array([np.inf])}, False)])
def test_finite(values, finite):
  assert scoring_lib.finite(values) == finite
