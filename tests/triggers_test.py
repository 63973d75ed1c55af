"""Tests of keras_epi.triggers: the trigger objects and EPICallback(trigger=)."""

import numpy as np
import pytest

import keras_epi
from keras_epi import indicators
from keras_epi import triggers
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def _sub(epoch, widths, epi_history=()):
  return triggers.SubNetwork(
      epoch, {name: np.arange(w) for name, w in widths.items()},
      {name: 16 for name in widths},
      epi_history[-1] if epi_history else None, tuple(epi_history))


def test_epi_trigger_fires_as_the_indicator_on_the_callbacks_values():
  trigger = triggers.EPITrigger(window=2, threshold=0.9)
  trigger.start("taylor")
  indicator = keras_epi.EarlyPruningIndicator(2, 0.9)
  fired, expected = [], []
  for e, w in enumerate([16, 10, 9, 9, 9]):
    expected.append(indicator.update([w, 8]))
    fired.append(trigger.update(e, _sub(e, {"a": w, "b": 8},
                                        indicator.values)))
  assert fired == expected and any(fired)
  # It computes no EPI of its own, so it has no state to keep and logs
  # nothing: the values are the callback's.
  twin = triggers.EPITrigger(window=2, threshold=0.9)
  twin.start("taylor")
  twin.set_state(trigger.get_state())
  assert twin.logs() == trigger.logs() == {} == trigger.get_state()


def test_callback_and_trigger_share_one_epi():
  """An EPITrigger's own window is the callback's: the logged EPI is the one
  the trigger decides on."""
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, window=5,
                             trigger=triggers.EPITrigger(window=2,
                                                         threshold=0.9))
  history = model.fit(x, y, epochs=5, batch_size=32, verbose=0,
                      callbacks=[cb])
  assert cb.window == 2 and cb.threshold == 0.9
  scored = len(cb.epi_history)
  logged = history.history["epi"][:scored]
  assert [v is None for v in cb.epi_history] == [bool(np.isnan(v))
                                                 for v in logged]
  assert [v for v in cb.epi_history if v is not None] == [
      v for v in logged if not np.isnan(v)]
  fired = [indicators.epi_fires(cb.epi_history[:t + 1], 2, 0.9)
           for t in range(scored)]
  assert (cb.prune_epoch == scored) == fired[-1] and not any(fired[:-1])


def test_none_settings_come_from_the_callback():
  trigger = triggers.EPITrigger()
  trigger.start("magnitude", window=3, threshold=None)
  assert "window=3" in trigger.describe() and "0.983" in trigger.describe()


def test_early_bird_trigger_compares_masks():
  trigger = triggers.EarlyBirdTrigger(distance=0.1, window=2)
  trigger.start("taylor")
  assert not trigger.update(0, _sub(0, {"a": 8}))
  assert trigger.update(1, _sub(1, {"a": 8}))  # same mask: distance 0
  assert trigger.logs() == {"eb_distance": 0.0}
  assert trigger.ranks_batchnorm and trigger.gamma_penalty == 1e-4


def test_at_epoch_deadline_and_gradual():
  at = triggers.AtEpoch(3)
  assert [at.update(e, None) for e in range(4)] == [False, False, True, True]
  assert triggers.AtEpoch(0).at_start
  never = triggers.EPITrigger(threshold=1.0)
  deadline = triggers.Deadline(never, epoch=2)
  deadline.start("taylor")
  assert deadline.update(0, _sub(0, {"a": 8})) is False
  assert deadline.update(1, _sub(1, {"a": 9})) == "deadline"
  assert deadline.due(1) and not deadline.due(0)
  gradual = triggers.Gradual(deadline, steps=4)
  assert gradual.gradual_steps == 4 and gradual.name == "epi"
  assert triggers.find(gradual, triggers.EPITrigger) is never
  assert gradual.describe().startswith("Gradual(Deadline(EPITrigger(")


def test_policy_strings_are_shorthands_for_triggers():
  cb = keras_epi.EPICallback(policy="fixed", prune_epoch=2)
  assert isinstance(cb.trigger, triggers.AtEpoch) and cb.policy == "fixed"
  cb = keras_epi.EPICallback(prune_by=4, gradual_steps=2)
  assert isinstance(cb.trigger, triggers.Gradual)
  assert isinstance(cb.trigger.trigger, triggers.Deadline)


@pytest.mark.parametrize("kwargs, message", [
    (dict(trigger="epi"), "`trigger` must be a keras_epi.triggers.Trigger"),
    (dict(trigger=triggers.AtEpoch(1), policy="fixed", prune_epoch=1),
     "Pass either `trigger` or the policy arguments"),
    (dict(trigger=triggers.AtEpoch(1), prune_by=3),
     "Pass either `trigger` or the policy arguments"),
])
def test_bad_trigger_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    keras_epi.EPICallback(**kwargs)


def test_bad_trigger_settings_name_the_argument():
  with pytest.raises(ValueError, match="`prune_epoch` must be an integer"):
    triggers.AtEpoch(-1)
  with pytest.raises(ValueError, match="`prune_by` must be an integer"):
    triggers.Deadline(triggers.EPITrigger(), 0)
  with pytest.raises(ValueError, match="`trigger` must be a"):
    triggers.Deadline("epi", 3)
  with pytest.raises(ValueError, match=r"`threshold` must be a number"):
    triggers.EPITrigger(threshold=1.5)


class _WhenHalfIsKept(triggers.Trigger):
  name = "half"

  def __init__(self):
    self.seen = []

  def update(self, epoch, subnetwork):
    self.seen.append((epoch, subnetwork.kept_fraction))
    return subnetwork.kept_fraction <= 0.6


def test_a_trigger_of_your_own():
  model = make_model()
  x, y = make_data(64)
  trigger = _WhenHalfIsKept()
  cb = keras_epi.EPICallback(prune_ratio=0.5, trigger=trigger)
  history = model.fit(x, y, epochs=3, batch_size=32, verbose=0,
                      callbacks=[cb])
  assert trigger.seen[0][0] == 0 and trigger.seen[0][1] == pytest.approx(
      history.history["kept_fraction"][0])
  assert cb.prune_epoch == 1 and cb.prune_reason == "half"
  assert len(trigger.seen) == 1  # nothing is shown to it after the prune
