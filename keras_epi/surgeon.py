"""Model surgery: physically remove channels from a functional Keras model.

`prune_model` takes a *plan* (group name -> channel indices to keep, see
`keras_epi.channel_groups`), rebuilds the model with narrower layers and copies
every surviving weight. How one layer type is cut lives in `_WEIGHT_AXES` and
`_new_config`: which axis of which weight follows the layer's input channels
and which its output channels.
"""

import functools

from absl import logging
import keras
import numpy as np

from keras_epi import graph

_L = keras.layers

# (layer classes, {weight name: ((axis, side), ...)}), side one of "in" (the
# layer's input channels), "out" (its output channels) or "mid" (the
# depthwise output inside a separable conv: input channels repeated
# depth_multiplier times).
_WEIGHT_AXES = (
    (graph._CONV, {"kernel": ((-2, "in"), (-1, "out")),  # pylint: disable=protected-access
                   "bias": ((0, "out"),)}),
    (graph._CONV_TRANSPOSE, {"kernel": ((-2, "out"), (-1, "in")),  # pylint: disable=protected-access
                             "bias": ((0, "out"),)}),
    (graph._DEPTHWISE, {"kernel": ((-2, "in"),),  # pylint: disable=protected-access
                        "bias": ((0, "out"),)}),
    (graph._SEPARABLE, {"depthwise_kernel": ((-2, "in"),),  # pylint: disable=protected-access
                        "pointwise_kernel": ((-2, "mid"), (-1, "out")),
                        "bias": ((0, "out"),)}),
    ((_L.Dense,), {"kernel": ((0, "in"), (1, "out")), "bias": ((0, "out"),)}),
    ((_L.BatchNormalization,), {"gamma": ((0, "out"),), "beta": ((0, "out"),),
                                "moving_mean": ((0, "out"),),
                                "moving_variance": ((0, "out"),)}),
    ((_L.PReLU,), {"alpha": ((-1, "out"),)}),
)


def prune_model(model, keep, *, ignore=()):
  """Returns a copy of `model` without the channels that `keep` leaves out.

  Every weight of a surviving channel is copied: conv, dense and transposed
  conv kernels on both channel axes, biases, BatchNormalization gamma, beta
  and moving statistics, depthwise and separable kernels, PReLU slopes.
  Layer names, dtype policies, regularizers and all other configuration are
  preserved; nested models are rebuilt as nested models. The result is a
  plain Keras model: it saves as `.keras` and loads back with
  `keras.saving.load_model` without custom objects. The input model is not
  modified and shares no variables with the result.

  Args:
    model: A built functional or Sequential `keras.Model`.
    keep: Mapping from group name (`ChannelGroup.name`) to the indices of the
      group's channels to keep. Groups not named keep all their channels.
    ignore: The `ignore` given to `keras_epi.channel_groups` when the groups
      were computed.

  Returns:
    A new `keras.Model` (Sequential if `model` is Sequential).

  Raises:
    ValueError: if `keep` names an unknown group, has out-of-range, repeated
      or no indices for a group, or the model cannot be analysed (see
      `keras_epi.channel_groups`).

  Example:
  >>> groups = keras_epi.channel_groups(model)
  >>> keep = {g.name: range(g.size // 2) for g in groups}
  >>> small = keras_epi.prune_model(model, keep)
  """
  return prune_with_surgeon(model, keep, ignore)[0]


def prune_with_surgeon(model, keep, ignore=()):
  """`prune_model` that also returns the surgeon, whose `weight_pairs` maps
  old variables to new ones (for optimizer-state transfer). Internal."""
  analysis = graph.analyze(model, ignore)
  removed = analysis.removed_labels(keep)
  surgeon = _Surgeon(analysis, removed)
  return surgeon.model(model, ""), surgeon


class _Surgeon:
  """Rebuilds models and layers for one set of removed channel labels."""

  def __init__(self, analysis, removed):
    self._analysis = analysis
    self._removed = removed
    self._models = {}  # id(old model) -> new model
    self._layers = {}  # path -> (old layer, new layer)
    self._layer_masks = {}  # path -> {"in"/"out"/"mid": keep mask}

  def _mask(self, labels):
    return self._analysis.keep_mask(labels, self._removed)

  def model(self, model, prefix):
    """The rebuilt (and weight-loaded) copy of a model."""
    if id(model) in self._models:
      return self._models[id(model)]
    if prefix:  # nested: inputs may have lost channels
      labels = self._analysis.model_inputs[id(model)]
    else:
      labels = [None] * len(model.inputs)
    inputs = []
    for tensor, lab in zip(model.inputs, labels):
      shape = list(tensor.shape[1:])
      if lab is not None and shape:
        shape[-1] = int(self._mask(lab).sum())
      inputs.append(graph.new_input(tensor, shape))

    def operation_for(op):
      if isinstance(op, keras.Model):
        return self.model(op, prefix + op.name + "/")
      if not isinstance(op, keras.layers.Layer):
        return op  # a stateless keras.ops operation
      return self._layer(op, prefix + op.name)

    new = graph.rebuild(model, inputs, operation_for)
    self._models[id(model)] = new
    if not prefix:
      self._load_weights()
    return new

  def _layer(self, layer, path):
    if path in self._layers:
      return self._layers[path][1]
    new = layer_from_config(layer, _new_config(layer, self._masks(path)))
    self._layers[path] = (layer, new)
    return new

  def _masks(self, path):
    if path not in self._layer_masks:
      layer, ins, outs = self._analysis.calls[path]
      masks = {"in": self._mask(ins[0]) if ins else None,
               "out": self._mask(outs[0])}
      if isinstance(layer, graph._SEPARABLE):  # pylint: disable=protected-access
        masks["mid"] = np.repeat(masks["in"], layer.depth_multiplier)
      self._layer_masks[path] = masks
    return self._layer_masks[path]

  def weight_pairs(self):
    """Yields ``(old variable, new variable, slice)`` for every weight, where
    ``slice(array)`` cuts an array shaped like the old variable (its value or
    an optimizer slot) to the new variable's shape."""
    for path, (old, new) in self._layers.items():
      masks = self._masks(path)
      axes = _weight_axes(old)
      for old_weight, new_weight in zip(old.weights, new.weights):
        cuts = [(axis, masks[side])
                for axis, side in axes.get(old_weight.name, ())]
        yield old_weight, new_weight, functools.partial(_cut, cuts=cuts)

  def _load_weights(self):
    for old, new, cut in self.weight_pairs():
      value = cut(keras.ops.convert_to_numpy(old))
      if value.shape != tuple(new.shape):
        raise AssertionError(
            f"keras_epi surgeon: weight '{old.path}' expects shape "
            f"{tuple(new.shape)}, sliced {value.shape}. Please report this; "
            "pass the layer in `ignore=` meanwhile.")
      new.assign(value)
    logging.vlog(1, "keras_epi: rebuilt %d layers", len(self._layers))


def layer_from_config(layer, config):
  """A new, unbuilt layer of `layer`'s class made from `config`. Internal."""
  if isinstance(layer, _L.Lambda):
    # from_config refuses Python lambdas in safe mode; this one is the
    # caller's own object, so reuse its function.
    return _L.Lambda(layer.function, output_shape=layer._output_shape,  # pylint: disable=protected-access
                     mask=layer.mask, arguments=layer.arguments,
                     name=config["name"], dtype=config.get("dtype"),
                     trainable=config["trainable"])
  return type(layer).from_config(config)


def _cut(value, cuts):
  """Keeps the masked entries of `value` along each (axis, mask) cut."""
  for axis, mask in cuts:
    if value.shape[axis] == len(mask):
      value = np.compress(mask, value, axis=axis)
  return value


def _weight_axes(layer):
  for classes, axes in _WEIGHT_AXES:
    if isinstance(layer, classes):
      return axes
  return {}


def _new_config(layer, masks):
  """The layer's config with channel counts for the surviving channels."""
  config = layer.get_config()
  n_out = int(masks["out"].sum())
  if isinstance(layer, graph._CONV):  # pylint: disable=protected-access
    config["filters"] = n_out
    if layer.groups > 1 and masks["in"] is not None and \
        layer.groups == len(masks["in"]):
      config["groups"] = int(masks["in"].sum())
  elif isinstance(layer, (*graph._CONV_TRANSPOSE, *graph._SEPARABLE)):  # pylint: disable=protected-access
    config["filters"] = n_out
  elif isinstance(layer, _L.Dense):
    config["units"] = n_out
  elif isinstance(layer, _L.Reshape):
    target = list(config["target_shape"])
    if target[-1] != -1:  # with -1, Keras infers the size
      config["target_shape"] = tuple(target[:-1]) + (n_out,)
  return config


def output_axis(layer, weight_name):
  """Axis of `weight_name` that follows the layer's output channels, or None.

  Returns "depthwise" for a depthwise kernel ``(..., C, m)``, whose output
  channel ``c * m + k`` is the slice ``[..., c, k]``.
  """
  if isinstance(layer, graph._DEPTHWISE) and weight_name == "kernel":  # pylint: disable=protected-access
    return "depthwise"
  for axis, side in _weight_axes(layer).get(weight_name, ()):
    if side == "out":
      return axis
  return None


def output_filters(layer):
  """The weights that produce each output channel of a layer.

  Args:
    layer: A Keras layer.

  Returns:
    An array of shape ``(output channels, weights per channel)`` with the
    kernel weights of each output channel, for layers that create their output
    channels (convolutions of every kind, Dense), or None for the others.
  """
  if isinstance(layer, (_L.BatchNormalization, _L.PReLU)):
    return None
  for weight in layer.weights:
    name = "pointwise_kernel" if isinstance(layer, graph._SEPARABLE) else \
        "kernel"  # pylint: disable=protected-access
    if weight.name != name:
      continue
    return per_output_channel(keras.ops.convert_to_numpy(weight),
                              output_axis(layer, name))
  return None


def per_output_channel(value, axis):
  """Reshapes a weight to ``(output channels, rest)`` (NumPy)."""
  if axis == "depthwise":
    value = value.reshape(*value.shape[:-2], -1)  # (..., C*m), c-major
    axis = -1
  value = np.moveaxis(value, axis, 0)
  return value.reshape(value.shape[0], -1)
