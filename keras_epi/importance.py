"""How much each channel of a group matters.

Scores are per group: ``{group name: np.ndarray of shape (group.size,)}``,
higher meaning more important. Coupled channels are scored as one: a group's
score for channel ``i`` is the sum of its members' scores for the positions
that carry channel ``i`` (HALP's convention for coupled groups).
"""

import warnings

import keras
import numpy as np

from keras_epi import _backend as backend
from keras_epi import graph
from keras_epi import _weights as weights_lib
from keras_epi import layers as layers_lib

TAYLOR_REDUCTIONS = ("square", "abs")


def magnitude_importance(model, groups):
  """Filter-magnitude importance, normalised by filter size.

  For every member layer that creates the channel (a convolution or Dense
  kernel), the filter ``W_n`` producing output channel ``n`` scores
  ``||W_n||_2 / sqrt(P)`` with ``P`` its number of weights, so that a global
  ranking is not dominated by layers with a wide fan-in. The group's score for
  a channel is the sum over its producing members (EPI-METHOD.md, [T]). An
  attention head is one channel of its layer's heads: ``W_n`` is every
  weight of head ``n`` (its query, key, value and output projections).

  Args:
    model: The model the groups were computed on.
    groups: The list returned by `keras_epi.channel_groups(model)`.

  Returns:
    ``{group name: float64 array of shape (group.size,)}``.
  """
  scores = {}
  for group in groups:
    total = np.zeros(group.size)
    for path, positions in group.members:
      layer = graph.layer_at(model, path)
      filters = None if layer is None else weights_lib.side_filters(
          layer, graph.member_side(path)[1])
      if filters is None:
        continue
      norms = np.linalg.norm(filters.astype(np.float64), axis=1) / np.sqrt(
          filters.shape[1])
      total += gather_channels(norms, positions)
    scores[group.name] = total
  return scores


def gather_channels(per_output, positions):
  """A member's values per group channel: ``per_output[positions]`` summed
  over repeats, 0 where the member does not carry the channel (-1)."""
  valid = positions >= 0
  values = np.where(valid, np.asarray(per_output)[np.where(valid, positions,
                                                           0)], 0.0)
  return values.sum(axis=1) if values.ndim == 2 else values


class TaylorScorer:
  """First-order Taylor importance from the gradients of the train step.

  Per mini-batch and group channel ``i`` (Molchanov et al. 2019,
  arXiv:1906.10771, "gate after BN"; coupled members summed as in HALP)::

    s_i = sum over BatchNormalization members of
          gamma_c * dL/dgamma_c + beta_c * dL/dbeta_c     (c carrying i)

  and, for a group without a trainable BatchNormalization, the fallback
  ``s_i = sum over producing members of sum(w * dL/dw)`` over the kernel
  weights and bias of the filters producing ``i``. Over the batches of an
  interval the score is ``mean(s_i ** 2)`` (reduction "square",
  Taylor_pruning) or ``mean(|s_i|)`` ("abs", HALP).

  `update` is called from inside the optimizer's `apply` with the gradients
  the train step has already computed (no second backward pass), on any
  backend (`keras_epi._backend.StepSum` says where the sums are kept). Under
  a `tf.distribute` strategy each replica's ``s`` comes from its share of
  the global batch (Keras scales the per-replica loss by 1/replicas), so the
  replicas' ``s`` are summed with an all-reduce before squaring: the result
  equals the single-device score for the same global batch, as it is under
  JAX's `keras.distribution`, whose gradients are of the global batch.
  Batches whose ``s`` is not finite are skipped and counted in `skipped`;
  `calls` counts the batches seen (a loss-scale optimizer does not call the
  inner optimizer, so not `update`, for the steps it skips).
  """

  def __init__(self, model, groups, reduction="square"):
    if reduction not in TAYLOR_REDUCTIONS:
      raise ValueError(f"`taylor_reduction` must be one of "
                       f"{TAYLOR_REDUCTIONS}, received {reduction!r}.")
    self.reduction = reduction
    self.groups = list(groups)
    self._terms = [self._group_terms(model, g) for g in self.groups]
    self._sum = backend.StepSum(model, sum(g.size for g in self.groups),
                                reduction)

  @staticmethod
  def _group_terms(model, group):
    """[(kind, layer, positions, side)]: BN members, else producing
    members (`side`: the member's side of the layer, "out" or an inner
    side such as an attention layer's heads)."""
    bn, producers, plain_bn = [], [], None
    for path, positions in group.members:
      layer, side = graph.layer_at(model, path), graph.member_side(path)[1]
      if layer is None:
        continue
      if isinstance(layer, keras.layers.BatchNormalization):
        if layer.trainable and (layer.scale or layer.center):
          bn.append(("bn", layer, positions, side))
        elif layer.trainable:
          plain_bn = layer
      elif layer.trainable and weights_lib.side_filters(layer,
                                                       side) is not None:
        producers.append(("filter", layer, positions, side))
    if not bn and plain_bn is not None:
      warnings.warn(
          f"keras_epi: channel group '{group.name}' is normalised by "
          f"'{plain_bn.name}' (BatchNormalization with center=False, "
          "scale=False), so the first-order Taylor term of its filters is "
          "zero (the loss does not change with their scale): its Taylor "
          "scores are rounding noise. Use criterion='magnitude', or a "
          "BatchNormalization with scale or center.", UserWarning,
          stacklevel=5)
    return bn or producers

  def update(self, grads, variables):
    """Adds one batch. Runs inside the train step (in replica context under
    a `tf.distribute` strategy)."""
    ops = keras.ops
    grad_of = {id(v): g for g, v in zip(grads, variables) if g is not None}
    parts = []
    for group, terms in zip(self.groups, self._terms):
      s = ops.zeros([group.size], "float32")
      for kind, layer, positions, side in terms:
        per_channel = (_bn_taylor(layer, grad_of) if kind == "bn" else
                       _filter_taylor(layer, grad_of, side))
        if per_channel is None:
          continue
        valid = positions >= 0
        gathered = ops.take(per_channel, np.where(valid, positions, 0),
                            axis=0)
        gathered = gathered * ops.convert_to_tensor(valid, "float32")
        if len(positions.shape) == 2:
          gathered = ops.sum(gathered, axis=1)
        s = s + gathered
      parts.append(s)
    self._sum.add(ops.concatenate(parts, axis=0))

  @property
  def skipped(self):
    """Batches whose scores were not finite, since the scorer was made."""
    return self._sum.counts()[1]

  @property
  def calls(self):
    """Batches seen (`update` calls) since the scorer was made."""
    return self._sum.counts()[2]

  def result(self):
    """``{group name: mean score over the interval}`` (NumPy), or None when
    no batch was scored."""
    steps = self._sum.counts()[0]
    if steps == 0:
      return None
    total = self._sum.total() / steps
    scores, start = {}, 0
    for group in self.groups:
      scores[group.name] = total[start:start + group.size]
      start += group.size
    return scores

  def reset(self):
    self._sum.reset()


def _bn_taylor(layer, grad_of):
  """``gamma * dL/dgamma + beta * dL/dbeta`` per channel, or None."""
  s = None
  for weight in (getattr(layer, "gamma", None), getattr(layer, "beta", None)):
    if weight is None or id(weight) not in grad_of:
      continue
    term = _product(weight, grad_of)
    s = term if s is None else s + term
  return s


def _filter_taylor(layer, grad_of, side="out"):
  """``sum(w * dL/dw)`` over each output channel's kernel and bias (or
  over each channel of another side: every weight of an attention head)."""
  s = None
  rule = layers_lib.rule_of(layer)
  for key, weight in zip(weights_lib.weight_keys(layer), layer.weights):
    axes = rule.side_axes(key, side)
    axis = axes[0] if axes else None
    if axis is None or id(weight) not in grad_of:
      continue
    product = _product(weight, grad_of)
    if axis == "depthwise":
      product = keras.ops.reshape(product, [-1, product.shape[-2] *
                                            product.shape[-1]])
      axis = -1
    ndim = len(product.shape)
    axis %= ndim
    term = keras.ops.sum(product,
                         axis=tuple(a for a in range(ndim) if a != axis))
    s = term if s is None else s + term
  return s


def _product(weight, grad_of):
  """``w * dL/dw`` in float32 (the weight's value in the step)."""
  return (keras.ops.cast(weight.value, "float32") *
          keras.ops.cast(grad_of[id(weight)], "float32"))


def batchnorm_gamma_importance(model, groups):
  """Early-Bird's scores: the sum of |gamma| over a group's
  BatchNormalization members (zero for a group without one)."""
  scores = {}
  for g in groups:
    total = np.zeros(g.size)
    for path, positions in g.members:
      layer = graph.layer_at(model, path)
      if isinstance(layer, keras.layers.BatchNormalization) and \
          getattr(layer, "gamma", None) is not None:
        total += gather_channels(
            np.abs(keras.ops.convert_to_numpy(layer.gamma)), positions)
    scores[g.name] = total
  return scores
