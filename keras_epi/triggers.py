"""When to prune: the triggers of `keras_epi.EPICallback`.

A trigger looks at the dominant sub-network of each epoch (the channels that
pruning now would keep) and says when to prune, the way a TFMOT pruning
schedule is an object. `EPICallback(trigger=...)` takes one; its
``policy="epi" | "early_bird" | "fixed"`` strings (with ``prune_by`` and
``gradual_steps``) are shorthands for the triggers here:

  EPITrigger()                        policy="epi"
  EarlyBirdTrigger(distance=0.1)      policy="early_bird"
  AtEpoch(3)                          policy="fixed", prune_epoch=3
  Deadline(EPITrigger(), epoch=20)    prune_by=20
  Gradual(EPITrigger(), steps=4)      gradual_steps=4

A trigger of your own is a small class::

  class WhenKeptFractionSettles(keras_epi.triggers.Trigger):
    name = "settled"
    def update(self, epoch, subnetwork):
      return subnetwork.kept_fraction < 0.6

Its state (`get_state` / `set_state`, plain JSON data) is saved with the
run's state, so that an interrupted run resumes with it.
"""

import dataclasses
import warnings

import numpy as np

from keras_epi import _validation as validation
from keras_epi import indicators

POLICIES = ("epi", "early_bird", "fixed")  # EPICallback's `policy`


@dataclasses.dataclass(frozen=True)
class SubNetwork:
  """The dominant sub-network of one epoch, as a trigger sees it.

  Attributes:
    epoch: The epoch that just ended (0-based).
    keep: {group name: kept channel indices}.
    sizes: {group name: channels of the dense group}.
    epi: The Early Pruning Indicator of the callback's `window` (None until
      defined).
    epi_history: EPI of every epoch the callback has scored, this one last
      (None where undefined): the values `EPITrigger` decides from. The
      callback computes EPI once, for its logs and its trigger alike.
  """
  epoch: int
  keep: dict
  sizes: dict
  epi: float = None
  epi_history: tuple = ()

  @property
  def widths(self):
    """{group name: kept width}, in the groups' order."""
    return {name: len(kept) for name, kept in self.keep.items()}

  @property
  def kept_fraction(self):
    return sum(self.widths.values()) / sum(self.sizes.values())

  def mask(self):
    """The kept channels of all groups as one boolean vector."""
    return np.concatenate([np.isin(np.arange(self.sizes[name]), kept)
                           for name, kept in self.keep.items()])


class Trigger:
  """Base class: decides at the end of each epoch whether to prune.

  The protocol `EPICallback` uses: `update` (override it), `due`, and the
  state (`get_state` / `set_state`, plain JSON data saved with the run's
  state); `start` is called when a fit begins from scratch.

  Attributes:
    name: The `EPICallback.prune_reason` when it fires.
    gradual_steps, ranks_batchnorm, gamma_penalty: Settings the callback
      reads once, when it is made: `Gradual`'s steps, and Early-Bird's
      scoring (rank the dominant sub-network by BatchNormalization |gamma|,
      with an L1 penalty on gamma while searching).
  """
  name = "custom"
  gradual_steps = 1
  ranks_batchnorm = False
  gamma_penalty = 0.0

  def start(self, criterion, **settings):
    """Called when a fit begins from scratch: clear any state. `criterion`
    is the callback's ("taylor" or "magnitude"); `settings` its EPI
    `window` and `threshold`."""
    del criterion, settings

  def update(self, epoch, subnetwork):
    """Sees the dominant sub-network of `epoch`; returns True (or a reason
    string, which becomes `prune_reason`) to prune now."""
    raise NotImplementedError

  def due(self, epoch):
    """Whether pruning is due at the end of `epoch` whatever the scores (an
    epoch whose scores were not finite still prunes then); ``due(-1)``:
    at initialisation, before the first epoch ends."""
    del epoch
    return False

  @property
  def at_start(self):
    """Whether it prunes at initialisation (``due(-1)``)."""
    return bool(self.due(-1))

  def logs(self):
    """Values added to the epoch's logs (floats)."""
    return {}

  def get_state(self):
    return {}

  def set_state(self, state):
    del state

  def __repr__(self):
    return f"{type(self).__name__}()"

  def describe(self):
    """The `repr` (kept for code written against keras_epi 0.x)."""
    return repr(self)


class EPITrigger(Trigger):
  """The paper's policy: prune at the first epoch whose Early Pruning
  Indicator reaches `threshold` while still rising (at least each of the
  `window` values before it): `keras_epi.indicators.epi_fires` on the EPI
  values the callback computed (`SubNetwork.epi_history`).

  Args:
    window: r, the epochs EPI compares with (>= 1); None takes the
      callback's `window`. Given, it is the window of the callback's EPI.
    threshold: tau in (0, 1]; None takes the callback's `threshold` (the
      paper's value for its criterion unless given).
  """
  name = "epi"

  def __init__(self, window=None, threshold=None):
    self.window = None if window is None else validation.integer(
        "window", window, 1)
    self.threshold = None if threshold is None else validation.number(
        "threshold", threshold, "(0, 1]")
    self._settings = (self.window or 5, self.threshold or
                      indicators.PAPER_THRESHOLDS["taylor"])

  def start(self, criterion, window=5, threshold=None):  # pylint: disable=arguments-differ
    if threshold is None:
      threshold = indicators.PAPER_THRESHOLDS[criterion]
    self._settings = (self.window or window,
                      threshold if self.threshold is None else self.threshold)

  def update(self, epoch, subnetwork):
    window, threshold = self._settings
    return indicators.epi_fires(subnetwork.epi_history, window, threshold)

  def __repr__(self):
    return "EPITrigger(window=%d, threshold=%g)" % self._settings


class EarlyBirdTrigger(Trigger):
  """Early-Bird (You et al. 2020): the masks of BatchNormalization |gamma|
  settle (largest Hamming distance over the last `window` masks below
  `distance`), with an L1 penalty `penalty` on gamma while searching.
  Logs ``eb_distance``."""
  name = "early_bird"
  ranks_batchnorm = True

  def __init__(self, distance=0.1, penalty=1e-4, window=5):
    self.distance = validation.number("early_bird_distance", distance,
                                      "(0, 1]")
    self.gamma_penalty = validation.number("early_bird_penalty", penalty,
                                           "[0, inf)")
    self.window = validation.integer("window", window, 2)
    self._indicator = indicators.EarlyBirdIndicator(self.window,
                                                    self.distance)

  def start(self, criterion, **unused):
    self._indicator.reset()

  def update(self, epoch, subnetwork):
    return self._indicator.update(subnetwork.mask())

  def logs(self):
    latest = self._indicator.latest
    return {"eb_distance": float(1.0 if latest is None else latest)}

  @property
  def history(self):
    return list(self._indicator.values)

  def get_state(self):
    return self._indicator.get_state()

  def set_state(self, state):
    self._indicator.set_state(state)

  def __repr__(self):
    return (f"EarlyBirdTrigger(distance={self.distance:g}, "
            f"penalty={self.gamma_penalty:g}, window={self.window})")


class AtEpoch(Trigger):
  """Prunes after `epoch` dense epochs (the oracle grid's policy); 0 prunes
  at initialisation, after the callback's `init_steps` batches."""
  name = "fixed"

  def __init__(self, epoch):
    self.epoch = validation.integer("prune_epoch", epoch, 0)

  def update(self, epoch, subnetwork):
    return self.due(epoch)

  def due(self, epoch):
    return epoch + 1 >= self.epoch

  def __repr__(self):
    return f"AtEpoch({self.epoch})"


class _Wrapper(Trigger):
  """Delegates everything to `trigger`."""

  def __init__(self, trigger):
    if not isinstance(trigger, Trigger):
      raise ValueError(f"`trigger` must be a keras_epi.triggers.Trigger, "
                       f"received {trigger!r}.")
    self.trigger = trigger
    self.name = trigger.name

  def start(self, criterion, **kwargs):
    self.trigger.start(criterion, **kwargs)

  def update(self, epoch, subnetwork):
    return self.trigger.update(epoch, subnetwork)

  def due(self, epoch):
    return self.trigger.due(epoch)

  def logs(self):
    return self.trigger.logs()

  def get_state(self):
    return self.trigger.get_state()

  def set_state(self, state):
    self.trigger.set_state(state)


class Deadline(_Wrapper):
  """`trigger`, or at the end of dense epoch `epoch` (1-based: after that
  many epochs) if it has not fired by then; `prune_reason` is then
  "deadline". A guard for short schedules where tau may never be reached
  (not from the paper)."""

  def __init__(self, trigger, epoch):
    super().__init__(trigger)
    self.epoch = validation.integer("prune_by", epoch, 1)

  def update(self, epoch, subnetwork):
    fired = self.trigger.update(epoch, subnetwork)
    if not fired and epoch + 1 >= self.epoch:
      return "deadline"
    return fired

  def due(self, epoch):
    return epoch + 1 >= self.epoch or self.trigger.due(epoch)

  def __repr__(self):
    return f"Deadline({self.trigger!r}, epoch={self.epoch})"


class Gradual(_Wrapper):
  """`trigger`, pruning gradually over the epoch after it fires (HALP,
  Taylor_pruning): `steps` equal steps spread over that epoch, importance
  re-estimated before each, removed channels held at zero, and the model is
  cut at that epoch's end. Needs the epoch's length (`steps_per_epoch`)."""

  def __init__(self, trigger, steps):
    super().__init__(trigger)
    self.gradual_steps = validation.integer("gradual_steps", steps, 1)

  def __repr__(self):
    return f"Gradual({self.trigger!r}, steps={self.gradual_steps})"


def find(trigger, cls):
  """The trigger of class `cls` in `trigger` or the triggers it wraps."""
  while isinstance(trigger, _Wrapper) and not isinstance(trigger, cls):
    trigger = trigger.trigger
  return trigger if isinstance(trigger, cls) else None


def chain(trigger):
  """`trigger` and the triggers it wraps, outermost first."""
  found = [trigger]
  while isinstance(found[-1], _Wrapper):
    found.append(found[-1].trigger)
  return found


def settings(trigger, window, threshold, criterion):
  """What `trigger` sets for `EPICallback`, read once: ``(window,
  threshold, gradual_steps, ranks_batchnorm, gamma_penalty)``. An
  `EPITrigger`'s own window and threshold are the callback's EPI; a
  threshold of None is the paper's for `criterion`."""
  found = chain(trigger)
  epi = find(trigger, EPITrigger)
  if epi is not None:
    window = epi.window or window
    threshold = threshold if epi.threshold is None else epi.threshold
  window = validation.integer("window", window, 1)
  threshold = validation.number(
      "threshold", indicators.PAPER_THRESHOLDS[criterion]
      if threshold is None else threshold, "(0, 1]")
  return (window, threshold, max(t.gradual_steps for t in found),
          any(t.ranks_batchnorm for t in found),
          next((t.gamma_penalty for t in found if t.gamma_penalty), 0.0))


def check_epochs(trigger, params):
  """A warning where a fixed prune epoch or a deadline of `trigger` lies
  beyond the fit's last epoch (it would never prune)."""
  epochs = (params or {}).get("epochs")
  for t in chain(trigger):
    due = getattr(t, "epoch", None) if isinstance(t, (AtEpoch,
                                                       Deadline)) else None
    if epochs is not None and due is not None and due > epochs:
      argument = "prune_epoch" if isinstance(t, AtEpoch) else "prune_by"
      warnings.warn(
          f"EPICallback: {t!r} prunes after {due} dense epochs, but this fit "
          f"has {epochs}: it will not prune. Lower `{argument}` or train "
          "longer.", UserWarning, stacklevel=4)


def from_policy(policy, prune_epoch=None, prune_by=None, gradual_steps=1,
                early_bird_penalty=1e-4, early_bird_distance=0.1):
  """The trigger that `EPICallback`'s policy arguments stand for."""
  early_bird_penalty = validation.number("early_bird_penalty",
                                         early_bird_penalty, "[0, inf)")
  early_bird_distance = validation.number("early_bird_distance",
                                          early_bird_distance, "(0, 1]")
  if policy == "fixed":
    trigger = AtEpoch(validation.integer("prune_epoch", prune_epoch, 0,
                                         " with policy='fixed'"))
  elif prune_epoch is not None:
    raise ValueError(f"`prune_epoch` is only used with policy='fixed'; "
                     f"received prune_epoch={prune_epoch!r} with "
                     f"policy={policy!r}.")
  elif policy == "early_bird":
    trigger = EarlyBirdTrigger(early_bird_distance, early_bird_penalty)
  else:
    trigger = EPITrigger()
  if prune_by is not None:
    if policy == "fixed" or not validation.is_integer(prune_by) or \
        prune_by < 1:
      raise ValueError(
          f"`prune_by` must be None or an integer >= 1 with policy='epi' "
          f"or 'early_bird', received prune_by={prune_by!r} with "
          f"policy={policy!r}.")
    trigger = Deadline(trigger, prune_by)
  gradual_steps = validation.integer("gradual_steps", gradual_steps, 1)
  if gradual_steps > 1:
    trigger = Gradual(trigger, gradual_steps)
  return trigger


def from_arguments(trigger, policy="epi", prune_epoch=None, prune_by=None,
                   gradual_steps=1, early_bird_penalty=1e-4,
                   early_bird_distance=0.1):
  """`EPICallback`'s trigger: `trigger`, or the one its policy arguments
  stand for (`from_policy`); a ValueError where both are given."""
  validation.choice("policy", policy, POLICIES)
  if trigger is None:
    return from_policy(policy, prune_epoch, prune_by, gradual_steps,
                       early_bird_penalty, early_bird_distance)
  if not isinstance(trigger, Trigger):
    raise ValueError(f"`trigger` must be a keras_epi.triggers.Trigger "
                     f"(e.g. keras_epi.triggers.EPITrigger()), received "
                     f"{trigger!r}.")
  if (policy, prune_epoch, prune_by, gradual_steps) != ("epi", None, None,
                                                         1):
    raise ValueError("Pass either `trigger` or the policy arguments "
                     "(`policy`, `prune_epoch`, `prune_by`, "
                     "`gradual_steps`), not both.")
  return trigger
