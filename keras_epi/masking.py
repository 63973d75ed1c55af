"""Masking: hold a plan's removed channels at zero in the training model.

Inside a plain `model.fit`, `EPICallback` does not cut the model; it keeps
training it with the removed channels zeroed, so that the trained model and
its cut (`keras_epi.prune_model`) compute the same function. Zeroing only the
producer's output is not enough: where an activation is not zero at zero
(``sigmoid(0) = 0.5``, ``hard_sigmoid``, a shifted ``elu``, BatchNormalization's
``beta`` before it), the consumer still reads ``act(0)`` from the removed
channels. So the masks zero both sides:

* the **producer** side: every weight that follows a removed output channel
  (kernels, biases, depthwise kernels, BatchNormalization gamma, beta and
  moving mean), so removed channels carry zero where the activation allows;
* the **consumer** side: every weight that reads a removed input channel (a
  convolution's or Dense layer's kernel rows, a separable convolution's
  depthwise and pointwise slices), so whatever the removed channels carry is
  multiplied by zero. This alone makes the masked model equal the cut one, for
  any activation.

The optimizer slots of those weights (momentum, Adam's moments, gradient
accumulators) are masked with them. The masks are read off the same resolved
plan (`keras_epi.plan.ResolvedPlan`) as the surgeon's cuts, so they cannot
disagree.
"""

import keras
import numpy as np

from keras_epi import _backend as backend
from keras_epi import _weights as weights_lib
from keras_epi import plan as plan_lib


def channel_masks(model, analysis, keep):
  """``[(variable, mask)]`` that zeroes the removed channels of a plan.

  Args:
    model: The model `analysis` was computed on (its optimizer, if any, has
      its slots masked too).
    analysis: `keras_epi.graph.analyze(model, ...)`.
    keep: The plan, ``{group name: kept indices}``.

  Returns:
    Pairs of a variable and a 0/1 NumPy mask of broadcastable shape (one
    entry per channel along each masked axis).
  """
  plan = plan_lib.ResolvedPlan(analysis, keep)
  masks = []
  for call in analysis.calls.values():
    if not isinstance(call.op, keras.layers.Layer) or not call.outs:
      continue
    side_masks = plan.masks(call)
    if all(m is None or m.all() for key in ("out", "in", "mid", *call.sides)
           for m in [side_masks.get(key)]):
      continue
    for key, weight in zip(weights_lib.weight_keys(call.op), call.op.weights):
      if weight.name == "moving_variance":
        continue
      mask = _weight_mask(weight, call.rule.weight_axes(key), side_masks)
      if mask is not None:
        masks.append((weight, mask))
  optimizer = getattr(model, "optimizer", None)
  if optimizer is not None:
    masks.extend(_slot_masks(optimizer, masks))
  return masks


def _weight_mask(weight, axes, side_masks):
  """The product of the keep masks along a weight's channel axes, or None
  when the weight loses nothing."""
  shape = list(weight.shape)
  mask = np.ones([1] * len(shape), dtype=bool)
  for axis, side in axes:
    alive = side_masks.get(side)
    if alive is None or alive.all():
      continue
    if axis == "depthwise":  # (..., C, multiplier), one entry per output
      if len(shape) < 2 or shape[-2] * shape[-1] != len(alive):
        continue
      part = alive.reshape([1] * (len(shape) - 2) + shape[-2:])
    else:
      if shape[axis] != len(alive):
        continue
      part_shape = [1] * len(shape)
      part_shape[axis] = len(alive)
      part = alive.reshape(part_shape)
    mask = mask & part
  return None if mask.all() else mask


def _slot_masks(optimizer, masks):
  """Masks for the optimizer variables (momentum, Adam slots) of `masks`."""
  inner = getattr(optimizer, "inner_optimizer", optimizer)
  by_prefix = {}
  for weight, mask in masks:
    if hasattr(weight, "path"):
      by_prefix[weight.path.replace("/", "_") + "_"] = (weight, mask)
  out = []
  for variable in inner.variables:
    name = variable.name
    best = None
    for prefix in by_prefix:
      if name.startswith(prefix) and (best is None or len(prefix) > len(best)):
        best = prefix
    if best is None:
      continue
    weight, mask = by_prefix[best]
    if tuple(variable.shape) == tuple(weight.shape):
      out.append((variable, mask))
  return out


def unmasked(masks):
  """Paths of the variables in `masks` whose removed entries are not zero
  (their weights were set from before the masks, e.g. restored)."""
  return [getattr(v, "path", v.name) for v, m in masks
          if np.any(keras.ops.convert_to_numpy(v)[np.broadcast_to(
              ~m, tuple(v.shape))])]


def make_mask_function(masks, model):
  """A function that multiplies every variable by its mask, with `model`'s
  variables made current first where the backend keeps them elsewhere
  during a fit (`keras_epi._backend.sync_variables`)."""
  apply = backend.masking_function(masks)

  def apply_masks():
    backend.sync_variables(model)
    apply()
  return apply_masks
