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
  """
  epoch: int
  keep: dict
  sizes: dict
  epi: float = None

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

  Override `update`; the other methods have working defaults.

  Attributes:
    name: The `EPICallback.prune_reason` when it fires.
    at_start: Prune at initialisation, before the first epoch ends.
    gradual_steps: Prune over this many steps of the epoch after the trigger
      (`Gradual`); 1 prunes in one shot.
    ranks_batchnorm: Rank the dominant sub-network by BatchNormalization
      |gamma| instead of the callback's criterion (Early-Bird).
    gamma_penalty: L1 coefficient on BatchNormalization gamma added to the
      train step's gradients until the prune (Early-Bird).
  """
  name = "custom"
  at_start = False
  gradual_steps = 1
  ranks_batchnorm = False
  gamma_penalty = 0.0

  def start(self, criterion, **settings):
    """Called when a fit begins from scratch: clear any state. `criterion`
    is the callback's ("taylor" or "magnitude"); `settings` its `window`
    and `threshold`."""
    del criterion, settings

  def update(self, epoch, subnetwork):
    """Sees the dominant sub-network of `epoch`; returns True (or a reason
    string, which becomes `prune_reason`) to prune now."""
    raise NotImplementedError

  def due(self, epoch):
    """Whether pruning is due at the end of `epoch` whatever the scores
    (an epoch whose scores were not finite still prunes then)."""
    del epoch
    return False

  def logs(self):
    """Values added to the epoch's logs (floats)."""
    return {}

  def get_state(self):
    return {}

  def set_state(self, state):
    del state

  def describe(self):
    return type(self).__name__


class _IndicatorTrigger(Trigger):
  """A trigger whose state is its indicator's (`self._indicator`)."""

  def get_state(self):
    return self._indicator.get_state()

  def set_state(self, state):
    self._indicator.set_state(state)


class EPITrigger(_IndicatorTrigger):
  """The paper's policy: prune when the Early Pruning Indicator over the
  last `window` epochs reaches `threshold`.

  Args:
    window: r, the epochs compared with (>= 1); None takes the callback's
      `window`.
    threshold: tau in (0, 1]; None takes the callback's `threshold` (the
      paper's value for its criterion unless given).
  """
  name = "epi"

  def __init__(self, window=None, threshold=None):
    self.window = None if window is None else validation.integer(
        "window", window, 1)
    self.threshold = None if threshold is None else validation.number(
        "threshold", threshold, "(0, 1]")
    self._indicator = None

  def start(self, criterion, window=5, threshold=None):  # pylint: disable=arguments-differ
    if threshold is None:
      threshold = indicators.PAPER_THRESHOLDS[criterion]
    self._indicator = indicators.EarlyPruningIndicator(
        self.window or window,
        threshold if self.threshold is None else self.threshold)

  def update(self, epoch, subnetwork):
    return self._indicator.update(list(subnetwork.widths.values()))

  def logs(self):
    return {"epi": float(self._indicator.latest or 0.0)}

  @property
  def latest(self):
    return None if self._indicator is None else self._indicator.latest

  def describe(self):
    return f"EPITrigger(window={self._indicator.window}, " \
           f"threshold={self._indicator.threshold})"


class EarlyBirdTrigger(_IndicatorTrigger):
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

  def describe(self):
    return f"EarlyBirdTrigger(distance={self.distance}, " \
           f"penalty={self.gamma_penalty})"


class AtEpoch(Trigger):
  """Prunes after `epoch` dense epochs (the oracle grid's policy); 0 prunes
  at initialisation, after the callback's `init_steps` batches."""
  name = "fixed"

  def __init__(self, epoch):
    self.epoch = validation.integer("prune_epoch", epoch, 0)
    self.at_start = self.epoch == 0

  def update(self, epoch, subnetwork):
    return self.due(epoch)

  def due(self, epoch):
    return epoch + 1 >= self.epoch

  def describe(self):
    return f"AtEpoch({self.epoch})"


class _Wrapper(Trigger):
  """Delegates everything to `trigger`."""

  def __init__(self, trigger):
    if not isinstance(trigger, Trigger):
      raise ValueError(f"`trigger` must be a keras_epi.triggers.Trigger, "
                       f"received {trigger!r}.")
    self.trigger = trigger
    self.name = trigger.name
    self.at_start = trigger.at_start
    self.gradual_steps = trigger.gradual_steps
    self.ranks_batchnorm = trigger.ranks_batchnorm
    self.gamma_penalty = trigger.gamma_penalty

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

  def describe(self):
    return f"Deadline({self.trigger.describe()}, epoch={self.epoch})"


class Gradual(_Wrapper):
  """`trigger`, pruning gradually over the epoch after it fires (HALP,
  Taylor_pruning): `steps` equal steps spread over that epoch, importance
  re-estimated before each, removed channels held at zero, and the model is
  cut at that epoch's end. Needs the epoch's length (`steps_per_epoch`)."""

  def __init__(self, trigger, steps):
    super().__init__(trigger)
    self.gradual_steps = validation.integer("gradual_steps", steps, 1)

  def describe(self):
    return f"Gradual({self.trigger.describe()}, steps={self.gradual_steps})"


def find(trigger, cls):
  """The trigger of class `cls` in `trigger` or the triggers it wraps."""
  while isinstance(trigger, _Wrapper) and not isinstance(trigger, cls):
    trigger = trigger.trigger
  return trigger if isinstance(trigger, cls) else None


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
  # Built even when `trigger` is given: it checks the policy arguments.
  built = from_policy(policy, prune_epoch, prune_by, gradual_steps,
                      early_bird_penalty, early_bird_distance)
  if trigger is None:
    return built
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
