"""The scores EPICallback ranks channels by, interval by interval.

`Scoring` answers one question for the callback: the importance of every
prunable channel over the interval just ended. Taylor scores come from the
train step's own gradients through a `keras_epi.tap.GradientTap` (installed
for one fit, removed on every exit); Early-Bird ranks BatchNormalization
|gamma| and adds its L1 penalty to gamma's gradients through the same tap;
magnitude scores read the weights. Non-finite intervals give None, with a
warning, and steps without a finite Taylor score are counted, including
those a loss-scale optimizer skipped.
"""

import weakref

from absl import logging
import keras
import numpy as np

from keras_epi import _backend as backend
from keras_epi import graph
from keras_epi import importance as importance_lib
from keras_epi import tap as tap_lib


class Scoring:
  """Scores for `groups` of `model` during one fit.

  Args:
    model: The compiled model being trained.
    groups: The prunable `ChannelGroup`s.
    criterion: "taylor" or "magnitude".
    batchnorm: Rank by BatchNormalization |gamma| (Early-Bird), whatever the
      criterion.
    gamma_penalty: L1 coefficient added to gamma's gradients until `stop`.
    reduction: Taylor's "square" or "abs".
  """

  def __init__(self, model, groups, criterion, batchnorm=False,
               gamma_penalty=0.0, reduction="square"):
    self.model, self.groups, self.criterion = model, groups, criterion
    self.batchnorm = batchnorm
    self.skipped = 0  # steps without a finite Taylor score
    self._tapped = 0  # train steps run with the tap
    self._scorer = None
    self._tap = None
    if criterion == "taylor" and not batchnorm:
      _require_optimizer(model)
      self._scorer = importance_lib.TaylorScorer(model, groups,
                                                 reduction=reduction)
    if self._scorer is not None or (batchnorm and gamma_penalty):
      _require_optimizer(model)
      self._tap = tap_lib.GradientTap(
          model, _on_gradients(self, _gammas(model, groups) if batchnorm
                               else set(), gamma_penalty))
      self._tap.install()

  @property
  def needs_steps(self):
    """Whether the scores come from train steps (Taylor)."""
    return self._scorer is not None

  def step(self):
    """Lets the next train step be seen (from `on_train_batch_begin`)."""
    if self._tap is not None:
      self._tap.grant()
      self._tapped += 1

  def observe(self, grads, variables):
    """One train step's gradients (from the tap), to the Taylor scorer."""
    if self._scorer is not None:
      self._scorer.update(grads, variables)

  def stop(self):
    """No more scoring: plain train steps from now on. Idempotent."""
    if self._tap is not None:
      self._tap.remove()
      self._tap = None
    self._count_skipped()

  def scores(self, epoch):
    """{group name: scores} of the interval just ended, or None where no
    step was scored or the scores are not finite; starts a new interval."""
    backend.sync_variables(self.model)  # weights read during an epoch
    if self.batchnorm:
      scores = importance_lib.batchnorm_gamma_importance(self.model,
                                                         self.groups)
    elif self._scorer is not None:
      scores = self._scorer.result()
      self._count_skipped()
      self._scorer.reset()
      if scores is None:
        return None
    else:
      scores = importance_lib.magnitude_importance(self.model, self.groups)
    if not finite(scores):
      logging.warning(
          "EPICallback: the scores of epoch %d are not finite (NaN or inf "
          "weights or gradients); the epoch is not counted.", epoch)
      return None
    return scores

  def scores_for_pruning(self, epoch):
    """`scores`; where there are none that are finite (every batch's Taylor
    scores were NaN, as under a loss scale that skips steps), filter
    magnitudes, so that a due trigger still prunes."""
    scores = self.scores(epoch)
    if scores is None:
      scores = importance_lib.magnitude_importance(self.model, self.groups)
      if not finite(scores):
        raise ValueError(
            "EPICallback: cannot prune, the model's weights are not finite "
            "(NaN or inf): there is no score to rank the channels by. Check "
            "the learning rate and the data, or add "
            "keras.callbacks.TerminateOnNaN().")
      logging.warning("EPICallback: no finite %s scores this interval; the "
                      "plan ranks filter magnitudes instead.", self.criterion)
    return scores

  def _count_skipped(self):
    """The scorer's non-finite steps, and the steps a loss-scale optimizer
    skipped before the inner optimizer (and so the scorer) saw them."""
    if self._scorer is not None:
      self.skipped = self._scorer.skipped + max(
          self._tapped - self._scorer.calls, 0)


def finite(scores):
  return all(np.isfinite(v).all() for v in scores.values())


def _require_optimizer(model):
  if getattr(model, "optimizer", None) is None:
    raise ValueError("EPICallback needs a compiled model (an optimizer) "
                     "for Taylor scores and Early-Bird.")


def _gammas(model, groups):
  """ids of the BatchNormalization gammas of `groups`."""
  gammas = set()
  for g in groups:
    for path, _ in g.members:
      layer = graph.layer_at(model, path)
      if isinstance(layer, keras.layers.BatchNormalization) and \
          getattr(layer, "gamma", None) is not None:
        gammas.add(id(layer.gamma))
  return gammas


def _on_gradients(scoring, gammas, penalty):
  """The tap's function: feeds the scorer, adds Early-Bird's penalty. Holds
  `scoring` weakly, so the tap never keeps it alive."""
  owner = weakref.ref(scoring)

  def on_gradients(grads, variables):
    scoring = owner()
    if scoring is None:
      return grads
    scoring.observe(grads, variables)
    if gammas and penalty:
      grads = [g + penalty * keras.ops.sign(v.value)
               if id(v) in gammas and g is not None else g
               for g, v in zip(grads, variables)]
    return grads
  return on_gradients
