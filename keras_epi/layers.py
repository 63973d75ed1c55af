"""The layer registry: everything keras_epi knows about a layer type.

One `LayerRule` per layer family answers four questions, and every part of
keras_epi reads the answers from here:

* **channels**: how the layer's output channels relate to its input channels
  (the channel graph, `keras_epi.channel_groups`):

  - ``"elementwise"``: output channel ``i`` is computed from input channel
    ``i`` alone (activations, BatchNormalization, pooling, a per-channel
    scale). Several inputs are coupled channel by channel, as by `Add`.
  - ``"produce"``: the layer creates new output channels from all of its
    input channels (a convolution, Dense).
  - ``"fixed"``: the layer mixes channels in a way that must not change
    (LayerNormalization over channels, a channel-shuffle): its input and
    output channels are kept whole.
  - a function ``flow(layer, call) -> [labels per output]`` for anything
    else (see `ChannelCall`); the built-in rules for Concatenate, Flatten,
    depthwise and grouped convolutions are written this way.

* **weights**: which axis of which weight carries the input (``"in"``) or
  output (``"out"``) channels, so the surgeon can slice it, the masking can
  zero it and optimizer slots can follow it.
* **config**: how the layer's config is rewritten for new widths (the
  surgeon rebuilds every layer from its config).
* **macs**: the multiply-accumulates of one call for one example
  (`keras_epi.count_macs`, MAC budgets).

Users teach keras_epi a layer of their own with one call of `register_layer`.
A layer that is registered nowhere is still handled where keras_epi can be
sure (see `keras_epi.graph`): a layer without sublayers whose every output
channel is shown, numerically, to depend on one input channel only is treated
as elementwise, and a composite layer is looked inside.
"""

import dataclasses
import functools
import math

import keras
import numpy as np

from keras_epi._channel_call import ChannelCall
from keras_epi._channel_call import Unsupported


_L = keras.layers

ELEMENTWISE = "elementwise"
PRODUCE = "produce"
FIXED = "fixed"
_FLOWS = (ELEMENTWISE, PRODUCE, FIXED)
_SIDES = ("in", "out", "mid")


@dataclasses.dataclass(frozen=True)
class LayerRule:
  """How keras_epi treats one layer family. Build it with `register_layer`.

  Attributes:
    channels: ``"elementwise"``, ``"produce"``, ``"fixed"`` or a flow
      function (see the module docstring).
    weights: ``{weight name: ((axis, side), ...)}``, side ``"in"``, ``"out"``
      or ``"mid"`` (a separable conv's depthwise output). A weight not named
      is copied whole.
    config: ``config(layer, config, n_in, n_out) -> config`` for new widths,
      or None (the config does not depend on the widths).
    macs: ``macs(layer, input_shape, output_shape) -> int`` for one example
      (per-example, channels-last shapes with the pruned widths), or None
      (not counted).
    filters: The weights that hold each output channel's filter (a
      convolution's kernel): magnitude importance and the Taylor fallback
      read them. ``"depthwise"`` as an axis in `weights` marks a depthwise
      kernel ``(..., C, multiplier)``.
    linear: The layer is a linear map followed by its `activation`, so a
      BatchNormalization after it can be folded (`keras_epi.fold_batchnorm`).
    data_format: The layer has a `data_format` and supports channels_last
      only when pruned.
    rebuild: ``rebuild(op, masks, call) -> op`` for operations that are not
      rebuilt from a config (keras.ops with channel arguments), or None.
    auto: Made by probing an unregistered layer: the surgeon finds the
      config key of its width and checks the rebuilt layer numerically.
    residual: A sum-like merge (Add, Subtract, Average, Maximum, Minimum;
      not Multiply): the channels through it are a residual stream
      (`ChannelGroup.residual`).
    follower: Its cost follows the width of the layer before it (a
      BatchNormalization or activation): `keras_epi.LatencyTable` times it
      with that layer.
    reshape: It only rearranges the elements of its input: an output size
      left open (a batch size traced as None made Keras' -1 unknown)
      follows from the input's size (`filled_reshape`).
    config_sides: ``config_sides(layer, config, masks) -> config`` for a
      layer with sides beyond its input and output (an attention layer's
      heads): applied after `config`, with the call's keep masks by side.
    build: ``build(layer, masks, call) -> None`` builds a rebuilt layer at
      its pruned widths, for a layer whose `build` does not take the
      shapes of its inputs in order (an attention layer's query, value and
      key shapes).
    call_macs: ``call_macs(call, masks) -> int``, the MACs of one call from
      its masks by side, for a layer whose cost depends on more than its
      first input's and its output's widths; it replaces `macs`.
    approximate: The rule that applies instead where the caller accepts
      cuts that change the layer's function (``through_norms=True``): a
      LayerNormalization or RMSNormalization over the channels, whose
      statistics are then taken over the kept channels. None: the layer
      has one rule.
  """
  channels: object
  weights: dict = dataclasses.field(default_factory=dict)
  config: object = None
  macs: object = None
  filters: tuple = ()
  linear: bool = False
  data_format: bool = False
  rebuild: object = None
  auto: bool = False
  residual: bool = False
  follower: bool = False
  reshape: bool = False
  config_sides: object = None
  build: object = None
  call_macs: object = None
  approximate: object = None

  @property
  def counted(self):
    """Whether the rule counts MACs."""
    return self.macs is not None or self.call_macs is not None

  def side_axes(self, weight_name, side):
    """The axes of a weight that follow `side`'s channels."""
    return [axis for axis, s in self.weight_axes(weight_name) if s == side]

  def weight_axes(self, weight_name):
    return self.weights.get(weight_name, ())

  def output_axis(self, weight_name):
    """The axis of a weight that follows the output channels, or None;
    ``"depthwise"`` for a depthwise kernel."""
    for axis, side in self.weight_axes(weight_name):
      if side == "out":
        return axis
    return None


IGNORED = LayerRule(FIXED)  # the rule of a layer whose channels stay whole


_REGISTRY = {}  # class -> LayerRule
_LOADERS = []  # functions that fill in the built-in rules, run once


def load_builtins(register):
  """Runs `register` (which calls `add_builtin`) before the first lookup;
  `keras_epi._builtin_layers` gives the built-in table this way."""
  _LOADERS.append(register)
  rule_for.cache_clear()


def load_builtins_for(package, register):
  """Runs `register` before the first lookup of a class from `package` (a
  top-level module name): built-in rules for another library's layers,
  whose modules are imported only where its models are used."""
  _PACKAGE_LOADERS.setdefault(package, []).append(register)
  rule_for.cache_clear()


_PACKAGE_LOADERS = {}  # package -> functions filling in its rules


def add_builtin(layer_class, rule):
  """A built-in rule; a class registered already keeps its own."""
  _REGISTRY.setdefault(layer_class, rule)
  _BUILTIN.add(id(_REGISTRY[layer_class]))


def is_builtin(rule):
  """Whether `rule` is one of keras_epi's own (a Keras layer or op)."""
  return id(rule) in _BUILTIN


_BUILTIN = set()  # ids of the built-in rules


def register_layer(layer_class, *, channels, weights=None, width=None,
                   macs=None, filters=(), override=False):
  """Tells keras_epi how a layer type uses its channels.

  Once registered, the layer's channels are grouped, pruned, counted and
  masked like those of built-in layers, and its subclasses follow the same
  rule unless they are registered themselves.

  Args:
    layer_class: A subclass of `keras.layers.Layer` (or of
      `keras.Operation`).
    channels: How output channels relate to input channels: ``"elementwise"``
      (output channel i comes from input channel i alone; a per-channel scale
      or activation; several inputs are coupled channel by channel),
      ``"produce"`` (new output channels from all inputs, like a
      convolution), ``"fixed"`` (channels are mixed and must stay whole), or
      a flow function ``f(layer, call) -> [labels per output]`` (see
      `keras_epi.layers.ChannelCall`).
    weights: ``{weight name: axis}`` for the weights that carry channels.
      For an elementwise layer the axis is the channel axis, e.g.
      ``{"gamma": -1}``. For a producer give the sides:
      ``{"kernel": {-2: "in", -1: "out"}, "bias": {0: "out"}}``. Weights
      not named are copied whole.
    width: The config key that holds the layer's channel count (``"filters"``,
      ``"units"``, ``"projection_dim"``), or a function
      ``f(config, n_in, n_out) -> config``. Needed when the layer creates
      its weights from a width in its config rather than from its input
      shape.
    macs: ``f(layer, input_shape, output_shape) -> int``, the
      multiply-accumulates of one call for one example (shapes without the
      batch axis, channels last, with the pruned widths). Default: not
      counted.
    filters: For a producer: the weights holding each output channel's
      filter (default: the weights with an ``"out"`` axis), read by
      magnitude importance.
    override: Replace an existing registration of `layer_class`.

  Returns:
    The `LayerRule` stored.

  Raises:
    ValueError: for a class that is not a Keras layer or operation, an
      unknown `channels`, malformed `weights`, or a class registered already
      (without `override=True`).

  Example:

  ```python
  @keras.saving.register_keras_serializable()
  class ChannelScale(keras.layers.Layer):
    def build(self, input_shape):
      self.scale = self.add_weight(shape=(input_shape[-1],), name="scale")
    def call(self, x):
      return x * self.scale

  keras_epi.register_layer(ChannelScale, channels="elementwise",
                           weights={"scale": -1})
  ```
  """
  if not (isinstance(layer_class, type) and
          issubclass(layer_class, keras.Operation)):
    raise ValueError(
        f"`layer_class` must be a keras.layers.Layer subclass, received "
        f"{layer_class!r}.")
  if not (callable(channels) or channels in _FLOWS):
    raise ValueError(f"`channels` must be one of {_FLOWS} or a function, "
                     f"received {channels!r}.")
  if layer_class in _REGISTRY and not override:
    raise ValueError(
        f"{layer_class.__name__} is registered already; pass override=True "
        "to replace its rule.")
  axes = _weight_axes_argument(weights, channels)
  if filters and not all(name in axes for name in filters):
    raise ValueError(f"`filters` {filters!r} must name weights given in "
                     "`weights`.")
  if not filters and channels == PRODUCE:
    filters = tuple(n for n, a in axes.items()
                    if any(s == "out" for _, s in a) and
                    any(s == "in" for _, s in a))
  if width is not None and not (callable(width) or isinstance(width, str)):
    raise ValueError(f"`width` must be a config key or a function, received "
                     f"{width!r}.")
  if macs is not None and not callable(macs):
    raise ValueError(f"`macs` must be a function, received {macs!r}.")
  rule = LayerRule(channels=channels, weights=axes,
                   config=width_config(width), macs=macs,
                   filters=tuple(filters))
  _REGISTRY[layer_class] = rule
  rule_for.cache_clear()
  return rule


def unregister_layer(layer_class):
  """Removes a rule added with `register_layer` (for tests and notebooks)."""
  if _REGISTRY.pop(layer_class, None) is None:
    raise ValueError(f"{getattr(layer_class, '__name__', layer_class)} is not "
                     "registered.")
  rule_for.cache_clear()


@functools.lru_cache(maxsize=None)
def rule_for(op_class):
  """The rule of the nearest registered class in `op_class`'s MRO, or None."""
  while _LOADERS:
    _LOADERS.pop(0)()
  for cls in op_class.__mro__:
    for register in _PACKAGE_LOADERS.pop(cls.__module__.split(".")[0], ()):
      register()
  for cls in op_class.__mro__:
    if cls in _REGISTRY:
      return _REGISTRY[cls]
  return None


def _weight_axes_argument(weights, channels):
  axes = {}
  for name, spec in (weights or {}).items():
    if isinstance(spec, (int, np.integer)) and not isinstance(spec, bool):
      side = "in" if channels == PRODUCE else "out"
      axes[name] = ((int(spec), side),)
    elif isinstance(spec, dict) and all(
        isinstance(a, (int, np.integer)) and s in _SIDES
        for a, s in spec.items()):
      axes[name] = tuple((int(a), s) for a, s in spec.items())
    else:
      raise ValueError(
          f"`weights[{name!r}]` must be an axis or {{axis: 'in'|'out'}}, "
          f"received {spec!r}.")
  return axes


def width_config(width):
  if width is None:
    return None
  if callable(width):
    return lambda layer, config, n_in, n_out: width(config, n_in, n_out)

  def rewrite(layer, config, n_in, n_out):
    del layer, n_in
    config[width] = n_out
    return config
  return rewrite


# -- flows that rules name by string, and that flow functions may reuse ----


def is_softmax(layer):
  """Whether the layer's activation normalises over the channels."""
  activation = getattr(layer, "activation", None)
  return getattr(activation, "__name__", activation) in ("softmax",
                                                          "log_softmax")


def over_channels_only(axis, shape):
  """Whether a normalisation `axis` (an int or a list) of a tensor with
  per-example `shape` is exactly the channel axis, the last."""
  ndim = len(shape) + 1
  axes = axis if isinstance(axis, (list, tuple)) else [axis]
  return sorted(a % ndim for a in axes) == [ndim - 1]


def activation_fixes(layer, labels, call):
  """A softmax over the channels pins them: `labels`, fixed where so."""
  if is_softmax(layer):
    call.fix(labels)
  return labels


def producer_flow(layer, call):
  out = call.produce(call.output_shapes[0][-1])
  return [activation_fixes(layer, out, call)]


def elementwise_flow(layer, call):
  del layer
  if len(call.inputs) == 1 and len(call.output_shapes) == 1:
    if call.output_shapes[0] and call.output_shapes[0][-1] == len(
        call.inputs[0]):
      return [call.inputs[0]]
  return [call.merge()]


def fixed_flow(layer, call):
  del layer
  for labels in call.inputs:
    call.fix(labels)
  return [call.fixed(width_of(s)) for s in call.output_shapes]


def elementwise_op_flow(op, call):
  """An element-wise keras.ops call; a per-channel constant argument pins
  the channels of its inputs."""
  del op
  constants = [a for a in keras.tree.flatten(call.arguments)
               if not isinstance(a, keras.KerasTensor)]
  if any(np.ndim(c) and math.prod(np.shape(c)) > 1 for c in constants):
    for labels in call.inputs:  # a per-channel constant pins the channels
      call.fix(labels)
  return [call.merge()]


def width_of(shape):
  """Channels of a per-example shape: its last axis, 1 where unknown or
  scalar (a single pseudo-channel)."""
  if not shape:
    return 1
  return shape[-1] if shape[-1] is not None else 1


_STRING_FLOWS = {ELEMENTWISE: elementwise_flow, FIXED: fixed_flow,
                 PRODUCE: producer_flow}


def flow_of(rule):
  """The flow function of a rule (strings resolved)."""
  return _STRING_FLOWS.get(rule.channels, rule.channels) \
      if isinstance(rule.channels, str) else rule.channels


# -- queries: what the other modules ask of a layer ---------------------------


def filled_reshape(in_shape, out_shape):
  """`out_shape` of a reshape of `in_shape` (per example) with its one open
  size filled in from the element count; as it is otherwise."""
  out_shape = tuple(out_shape)
  if out_shape.count(None) != 1 or None in tuple(in_shape) or not in_shape:
    return out_shape
  known = math.prod(d for d in out_shape if d is not None)
  total = math.prod(in_shape)
  if not known or total % known:
    return out_shape
  return tuple(total // known if d is None else d for d in out_shape)


def follows(call, producer):
  """Whether `call` simply follows `producer` in cost: a follower layer
  (BatchNormalization over the channels, an activation other than softmax)
  with one input and the producer's output shape."""
  op = call.op
  if not call.rule.follower or len(call.node.input_tensors) != 1:
    return False
  if tuple(call.out_shapes[0]) != tuple(producer.out_shapes[0]):
    return False
  if hasattr(op, "axis") and not over_channels_only(op.axis,
                                                    call.out_shapes[0]):
    return False
  return not is_softmax(op)


def folds_into(producer, batchnorm, shape):
  """Whether `batchnorm`, over the channels of a tensor of per-example
  `shape`, can be folded into the linear layer `producer` before it."""
  return (rule_of(producer).linear and
          getattr(producer, "activation", None) is keras.activations.linear
          and getattr(producer, "data_format", "channels_last") ==
          "channels_last" and over_channels_only(batchnorm.axis, shape))


def rule_of(layer):
  """The registry rule of a layer, or an empty (fixed) one."""
  return rule_for(type(layer)) or IGNORED
