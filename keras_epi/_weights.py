"""Which weights of a layer carry its channels (internal): the keys its rule
names them by, and each channel's filter, as the layer registry
(`keras_epi.layers`) says.
"""

import keras
import numpy as np

from keras_epi import _keras_internals as internals
from keras_epi import layers


def weight_keys(layer):
  """The key of every weight of `layer` in its rule's `weights`, in the
  order of `layer.weights`: a weight's name, or ``"sublayer/name"`` for a
  weight of a sublayer (an attention layer's ``"query/kernel"``)."""
  keys = {}

  def visit(op, prefix):
    for weight in internals.own_variables(op):
      keys.setdefault(id(weight), prefix + weight.name)
    for sub in internals.sublayers(op):
      visit(sub, f"{prefix}{sub.name}/")

  visit(layer, "")
  return [keys.get(id(w), w.name) for w in layer.weights]


def side_filters(layer, side="out"):
  """The weights of each channel of `side` of a layer (its output
  channels: the filters of its rule; another side, an attention layer's
  heads: every weight with an axis on it), as an array of shape
  ``(channels, weights per channel)``, or None where the layer has none."""
  if side == "out":
    return output_filters(layer)
  rule = layers.rule_of(layer)
  parts = []
  for key, weight in zip(weight_keys(layer), layer.weights):
    for axis in rule.side_axes(key, side):
      parts.append(per_output_channel(keras.ops.convert_to_numpy(weight),
                                      axis))
  return np.concatenate(parts, axis=1) if parts else None


def output_axis(layer, weight_name):
  """Axis of `weight_name` that follows the layer's output channels, or None.

  Returns "depthwise" for a depthwise kernel ``(..., C, m)``, whose output
  channel ``c * m + k`` is the slice ``[..., c, k]``.
  """
  return layers.rule_of(layer).output_axis(weight_name)


def output_filters(layer):
  """The weights that produce each output channel of a layer.

  Args:
    layer: A Keras layer.

  Returns:
    An array of shape ``(output channels, weights per channel)`` with the
    filter weights of each output channel, for layers whose rule names
    filters (convolutions of every kind, Dense), or None for the others.
  """
  rule = layers.rule_of(layer)
  for key, weight in zip(weight_keys(layer), layer.weights):
    if key in rule.filters:
      return per_output_channel(keras.ops.convert_to_numpy(weight),
                                rule.output_axis(key))
  return None


def per_output_channel(value, axis):
  """Reshapes a weight to ``(output channels, rest)`` (NumPy)."""
  if axis == "depthwise":
    value = value.reshape(*value.shape[:-2], -1)  # (..., C*m), c-major
    axis = -1
  value = np.moveaxis(value, axis, 0)
  return value.reshape(value.shape[0], -1)
