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

from keras_epi import _keras_internals as internals

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
    rebuild: ``rebuild(op, masks) -> op`` for operations that are not
      rebuilt from a config (keras.ops with channel arguments), or None.
    auto: Made by probing an unregistered layer: the surgeon finds the
      config key of its width and checks the rebuilt layer numerically.
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

  def weight_axes(self, weight_name):
    return self.weights.get(weight_name, ())

  def output_axis(self, weight_name):
    """The axis of a weight that follows the output channels, or None;
    ``"depthwise"`` for a depthwise kernel."""
    for axis, side in self.weight_axes(weight_name):
      if side == "out":
        return axis
    return None


class ChannelCall:
  """What a flow function sees of one call of a layer (see `LayerRule`).

  Attributes:
    inputs: For every input tensor, an integer array of channel labels, one
      per channel of its last axis. Equal labels must be pruned together.
    input_shapes: Per-example shapes of the inputs (no batch axis).
    output_shapes: Per-example shapes of the outputs.
    arguments: The call's positional arguments (tensors as KerasTensors).
    keyword_arguments: The call's keyword arguments.
  """

  def __init__(self, analysis, path, inputs, input_shapes, output_shapes,
               arguments=(), keyword_arguments=None):
    self._analysis = analysis
    self.path = path
    self.inputs = inputs
    self.input_shapes = input_shapes
    self.output_shapes = output_shapes
    self.arguments = arguments
    self.keyword_arguments = keyword_arguments or {}

  def produce(self, n):
    """Fresh labels for `n` channels this layer creates (a producer)."""
    return self._analysis.produce(self.path, n)

  def fix(self, labels):
    """Marks channels that must be kept."""
    self._analysis.fix(labels)

  def fixed(self, n):
    """Labels for `n` channels that must be kept."""
    return self._analysis.fixed(n)

  def merge(self, inputs=None):
    """Couples inputs channel by channel (broadcasting single channels);
    returns the labels of the result."""
    inputs = self.inputs if inputs is None else inputs
    return self._analysis.merge(inputs, self.output_shapes[0][-1], self.path)

  def unsupported(self, reason):
    """Raises the error that tells the user to register or ignore the
    layer."""
    raise Unsupported(reason)


class Unsupported(Exception):
  """A layer keras_epi cannot prune through (internal)."""


_REGISTRY = {}  # class -> LayerRule


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
                   config=_width_config(width), macs=macs,
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
  _register_builtins()
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


def _width_config(width):
  if width is None:
    return None
  if callable(width):
    return lambda layer, config, n_in, n_out: width(config, n_in, n_out)

  def rewrite(layer, config, n_in, n_out):
    del layer, n_in
    config[width] = n_out
    return config
  return rewrite


# -- built-in flows -----------------------------------------------------------


def _normalised_axes(axis, ndim):
  axes = axis if isinstance(axis, (list, tuple)) else [axis]
  return sorted(a % ndim for a in axes)


def _over_channels(axis, shape):
  """Whether `axis` (of a per-example `shape`, batch added) includes the
  channel axis."""
  ndim = len(shape) + 1
  if axis is None:
    return True
  return ndim - 1 in _normalised_axes(axis, ndim)


def _activation_fixes(layer, labels, call):
  activation = getattr(layer, "activation", None)
  name = getattr(activation, "__name__", activation)
  if name in ("softmax", "log_softmax"):
    call.fix(labels)
  return labels


def _conv_flow(layer, call):
  x = call.inputs[0]
  groups = getattr(layer, "groups", 1)
  if groups == 1:
    out = call.produce(layer.filters)
  elif groups == len(x):  # depthwise-like: out channel j reads input j//m
    out = np.repeat(x, layer.filters // groups)
  else:  # general grouped conv: each group must keep equal widths
    call.fix(x)
    out = call.produce(layer.filters)
    call.fix(out)
  return [_activation_fixes(layer, out, call)]


def _producer_flow(layer, call):
  out = call.produce(call.output_shapes[0][-1])
  return [_activation_fixes(layer, out, call)]


def _depthwise_flow(layer, call):
  out = np.repeat(call.inputs[0], layer.depth_multiplier)
  return [_activation_fixes(layer, out, call)]


def _elementwise_flow(layer, call):
  del layer
  if len(call.inputs) == 1 and len(call.output_shapes) == 1:
    if call.output_shapes[0] and call.output_shapes[0][-1] == len(
        call.inputs[0]):
      return [call.inputs[0]]
  return [call.merge()]


def _fixed_flow(layer, call):
  del layer
  for labels in call.inputs:
    call.fix(labels)
  return [call.fixed(width_of(s)) for s in call.output_shapes]


def _axis_flow(fixes_when_over_channels):
  """Elementwise unless the layer's `axis` covers the channels."""
  def flow(layer, call):
    x = call.inputs[0]
    if fixes_when_over_channels(layer, call):
      call.fix(x)
    return [x]
  return flow


def _batchnorm_fixes(layer, call):
  ndim = len(call.output_shapes[0]) + 1
  return _normalised_axes(layer.axis, ndim) != [ndim - 1]


def _axis_over_channels(layer, call):
  return _over_channels(layer.axis, call.output_shapes[0])


def _rescaling_fixes(layer, call):
  del call
  return bool(np.ndim(layer.scale) or np.ndim(layer.offset))


def _activation_flow(layer, call):
  return [_activation_fixes(layer, call.inputs[0], call)]


def _flatten_flow(layer, call):
  del layer
  shape = call.input_shapes[0]
  if any(d is None for d in shape):
    call.unsupported(f"flattening a tensor of unknown shape {shape}")
  return [np.tile(call.inputs[0], math.prod(shape[:-1]))]


def _reshape_flow(layer, call):
  in_shape, out_shape = call.input_shapes[0], call.output_shapes[0]
  x = call.inputs[0]
  if out_shape[-1] == in_shape[-1] and out_shape[-1] is not None:
    return [x]  # row-major: the channel axis is preserved
  if (None not in in_shape and out_shape[-1] == math.prod(in_shape) and
      math.prod(out_shape[:-1]) == 1):  # flattening
    return [np.tile(x, math.prod(in_shape[:-1]))]
  return _fixed_flow(layer, call)


def _permute_flow(layer, call):
  if tuple(layer.dims)[-1] == len(layer.dims):
    return [call.inputs[0]]
  return _fixed_flow(layer, call)


def _concatenate_flow(layer, call):
  ndim = len(call.output_shapes[0]) + 1
  if layer.axis % ndim == ndim - 1:
    return [np.concatenate(call.inputs)]
  return [call.merge()]


def elementwise_op_flow(op, call):
  """An element-wise keras.ops call; a per-channel constant argument pins
  the channels of its inputs."""
  del op
  constants = [a for a in keras.tree.flatten(call.arguments)
               if not isinstance(a, keras.KerasTensor)]
  if any(np.ndim(c) and np.size(c) > 1 for c in constants):
    for labels in call.inputs:  # a per-channel constant pins the channels
      call.fix(labels)
  return [call.merge()]


def _ops_concatenate_flow(op, call):
  ndim = len(call.output_shapes[0]) + 1
  if op.axis is not None and op.axis % ndim == ndim - 1:
    return [np.concatenate(call.inputs)]
  return [call.merge()]


def _ops_pad_flow(op, call):
  x = call.inputs[0]
  pads = op.pad_width
  ndim = len(call.input_shapes[0]) + 1
  channel_pad = pads[-1] if len(pads) == ndim else pads[0]
  if len(pads) not in (1, ndim) or tuple(channel_pad) != (0, 0):
    return _fixed_flow(op, call)
  return [x]


def _ops_split_flow(op, call):
  x = call.inputs[0]
  ndim = len(call.input_shapes[0]) + 1
  if op.axis % ndim != ndim - 1:
    return [x for _ in call.output_shapes]
  ends = np.cumsum([s[-1] for s in call.output_shapes])
  return [x[end - s[-1]:end] for s, end in zip(call.output_shapes, ends)]


def _ops_split_rebuild(op, masks):
  """A Split at the kept offsets when it cuts the channel axis."""
  outs = masks["outs"]
  if len(outs) < 2 or sum(len(m) for m in outs) != len(masks["in"]):
    return op  # a split along another axis
  kept = [int(m.sum()) for m in outs]
  if isinstance(op.indices_or_sections, int) and len(set(kept)) == 1:
    return op
  return type(op)([int(k) for k in np.cumsum(kept)[:-1]], axis=op.axis)


def _ops_reduce_flow(op, call):
  x = call.inputs[0]
  if _over_channels(op.axis, call.input_shapes[0]):
    return _fixed_flow(op, call)
  return [x]


def _ops_expand_squeeze_flow(op, call):
  x = call.inputs[0]
  in_shape, out_shape = call.input_shapes[0], call.output_shapes[0]
  if out_shape and in_shape and out_shape[-1] == in_shape[-1] == len(x):
    return [x]
  return _fixed_flow(op, call)


def _ops_reshape_flow(op, call):
  """keras.ops.reshape keeps its `newshape` when the graph is rebuilt: only
  a reshape that leaves the channel axis to Keras (-1 last, channels kept)
  passes channels; others keep them whole."""
  newshape = op.newshape if isinstance(op.newshape, (list, tuple)) else ()
  x = call.inputs[0]
  if (newshape and newshape[-1] == -1 and
      call.output_shapes[0][-1] == call.input_shapes[0][-1] == len(x)):
    return [x]
  return _fixed_flow(op, call)


def _ops_transpose_flow(op, call):
  axes = op.axes
  ndim = len(call.input_shapes[0]) + 1
  if axes is not None and tuple(axes)[-1] % ndim == ndim - 1:
    return [call.inputs[0]]
  return _fixed_flow(op, call)


def width_of(shape):
  """Channels of a per-example shape: its last axis, 1 where unknown or
  scalar (a single pseudo-channel)."""
  if not shape:
    return 1
  return shape[-1] if shape[-1] is not None else 1


# -- built-in MAC formulas ----------------------------------------------------


def _positions(shape):
  return math.prod(shape[:-1])


def _conv_macs(layer, in_shape, out_shape):
  c_in, c_out = in_shape[-1], out_shape[-1]
  groups = getattr(layer, "groups", 1)
  kernel_in = layer.kernel.shape[-2] if getattr(layer, "built", False) \
      else None
  if groups > 1 and kernel_in == 1:
    groups = c_in  # a depthwise-like grouped conv shrinks with its input
  return _positions(out_shape) * math.prod(layer.kernel_size) * (
      c_in // groups) * c_out


def _conv_transpose_macs(layer, in_shape, out_shape):
  return (_positions(in_shape) * in_shape[-1] * out_shape[-1] *
          math.prod(layer.kernel_size))


def _depthwise_macs(layer, in_shape, out_shape):
  del in_shape
  return _positions(out_shape) * math.prod(layer.kernel_size) * out_shape[-1]


def _separable_macs(layer, in_shape, out_shape):
  mid = in_shape[-1] * layer.depth_multiplier
  return _positions(out_shape) * (math.prod(layer.kernel_size) * mid +
                                  mid * out_shape[-1])


def _dense_macs(layer, in_shape, out_shape):
  del layer
  return _positions(out_shape) * in_shape[-1] * out_shape[-1]


# -- built-in config rewrites -------------------------------------------------


def _conv_config(layer, config, n_in, n_out):
  config["filters"] = n_out
  groups = getattr(layer, "groups", 1)
  if groups > 1 and getattr(layer, "built", False) and \
      layer.kernel.shape[-2] == 1:
    config["groups"] = n_in
  return config


def _reshape_config(layer, config, n_in, n_out):
  del layer, n_in
  target = list(config["target_shape"])
  if target[-1] != -1:  # with -1, Keras infers the size
    config["target_shape"] = tuple(target[:-1]) + (n_out,)
  return config


# -- the built-in table -------------------------------------------------------


_CONV_WEIGHTS = {"kernel": ((-2, "in"), (-1, "out")), "bias": ((0, "out"),)}
_BN_WEIGHTS = {name: ((0, "out"),) for name in
               ("gamma", "beta", "moving_mean", "moving_variance")}

# Layers that act on each channel independently (or only move data in
# space) and whose config does not depend on the channel count.
_PER_CHANNEL_NAMES = (
    "ReLU", "LeakyReLU", "ELU", "Dropout", "SpatialDropout1D",
    "SpatialDropout2D", "SpatialDropout3D", "GaussianNoise", "GaussianDropout",
    "AlphaDropout", "ActivityRegularization", "Identity", "Masking",
    "MaxPooling1D", "MaxPooling2D", "MaxPooling3D", "AveragePooling1D",
    "AveragePooling2D", "AveragePooling3D", "GlobalAveragePooling1D",
    "GlobalAveragePooling2D", "GlobalAveragePooling3D", "GlobalMaxPooling1D",
    "GlobalMaxPooling2D", "GlobalMaxPooling3D", "ZeroPadding1D",
    "ZeroPadding2D", "ZeroPadding3D", "Cropping1D", "Cropping2D",
    "Cropping3D", "UpSampling1D", "UpSampling2D", "UpSampling3D",
    "RepeatVector", "AdaptiveAveragePooling1D", "AdaptiveAveragePooling2D",
    "AdaptiveAveragePooling3D", "AdaptiveMaxPooling1D",
    "AdaptiveMaxPooling2D", "AdaptiveMaxPooling3D",
    # Preprocessing and augmentation that move pixels or treat each channel
    # alike and independently (identities at inference).
    "Resizing", "CenterCrop", "RandomFlip", "RandomRotation", "RandomZoom",
    "RandomTranslation", "RandomCrop", "RandomShear", "RandomPerspective",
    "RandomElasticTransform", "RandomContrast", "RandomBrightness",
    "RandomInvert", "RandomPosterization", "RandomGaussianBlur",
    "RandomSharpness", "Solarization", "RandomErasing",
)
# Layers that mix channels or whose per-channel behaviour depends on all
# channels: kept whole (at a model's input they are fixed anyway).
_MIXING_NAMES = (
    "GroupNormalization", "Normalization", "RandomGrayscale", "RandomHue",
    "RandomSaturation", "RandomColorJitter", "RandomColorDegeneration",
    "AutoContrast", "Equalization", "RandAugment", "AugMix", "MixUp",
    "CutMix", "Pipeline", "Embedding", "EinsumDense", "MultiHeadAttention",
    "GroupQueryAttention", "Attention", "AdditiveAttention", "LSTM", "GRU",
    "SimpleRNN", "Bidirectional", "ConvLSTM1D", "ConvLSTM2D", "ConvLSTM3D",
    "TimeDistributed", "RNN", "SimpleRNNCell", "GRUCell", "LSTMCell",
    "StackedRNNCells", "Dot", "Wrapper", "SpectralNormalization",
    "CategoryEncoding", "Discretization", "Hashing", "HashedCrossing",
    "IntegerLookup", "StringLookup", "TextVectorization", "MelSpectrogram",
    "STFTSpectrogram", "ContrastLimitedAdaptiveHistogramEqualization",
    "MaxNumBoundingBoxes", "TFSMLayer", "JaxLayer", "FlaxLayer",
    "TorchModuleWrapper",
)


def _classes(*names):
  """The keras.layers classes of these names that this Keras version has."""
  return tuple(c for c in (getattr(_L, n, None) for n in names)
               if c is not None)


def _op_class(fn, *args, **kwargs):
  """The keras.ops Operation class behind a public function (by tracing)."""
  out = fn(*args, **kwargs)
  out = keras.tree.flatten(out)[0]
  return type(internals.history(out).operation)


_BUILTINS_DONE = []


def _register_builtins():  # pylint: disable=too-many-statements
  """Fills the table once (lazily: no model building at import)."""
  if _BUILTINS_DONE:
    return
  _BUILTINS_DONE.append(True)

  def add(classes, rule):
    for cls in classes:
      _REGISTRY.setdefault(cls, rule)

  conv = _classes("Conv1D", "Conv2D", "Conv3D")
  add(conv, LayerRule(_conv_flow, _CONV_WEIGHTS, _conv_config, _conv_macs,
                      filters=("kernel",), linear=True, data_format=True))
  add(_classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
      LayerRule(_producer_flow,
                {"kernel": ((-2, "out"), (-1, "in")), "bias": ((0, "out"),)},
                _width_config("filters"), _conv_transpose_macs,
                filters=("kernel",), linear=True, data_format=True))
  add(_classes("DepthwiseConv1D", "DepthwiseConv2D"),
      LayerRule(_depthwise_flow,
                {"kernel": ((-2, "in"), ("depthwise", "out")),
                 "bias": ((0, "out"),)},
                None, _depthwise_macs, filters=("kernel",), linear=True,
                data_format=True))
  add(_classes("SeparableConv1D", "SeparableConv2D"),
      LayerRule(_producer_flow,
                {"depthwise_kernel": ((-2, "in"),),
                 "pointwise_kernel": ((-2, "mid"), (-1, "out")),
                 "bias": ((0, "out"),)},
                _width_config("filters"), _separable_macs,
                filters=("pointwise_kernel",), linear=True, data_format=True))
  add((_L.Dense,), LayerRule(
      _producer_flow,
      {"kernel": ((0, "in"), (1, "out")), "bias": ((0, "out"),)},
      _width_config("units"), _dense_macs, filters=("kernel",), linear=True))
  add((_L.BatchNormalization,), LayerRule(_axis_flow(_batchnorm_fixes),
                                          _BN_WEIGHTS))
  add((_L.PReLU,), LayerRule(ELEMENTWISE, {"alpha": ((-1, "out"),)}))
  add((_L.Activation,), LayerRule(_activation_flow))
  add(_classes("LayerNormalization", "UnitNormalization", "Softmax",
               "RMSNormalization"),
      LayerRule(_axis_flow(_axis_over_channels)))
  add((_L.Rescaling,), LayerRule(_axis_flow(_rescaling_fixes)))
  add(_classes(*_PER_CHANNEL_NAMES), LayerRule(ELEMENTWISE, data_format=True))
  add(_classes(*_MIXING_NAMES), LayerRule(FIXED))
  add((_L.Flatten,), LayerRule(_flatten_flow, data_format=True))
  add((_L.Reshape,), LayerRule(_reshape_flow, config=_reshape_config))
  add((_L.Permute,), LayerRule(_permute_flow))
  add((_L.Concatenate,), LayerRule(_concatenate_flow))
  add(_classes("Add", "Subtract", "Multiply", "Average", "Maximum",
               "Minimum"), LayerRule(ELEMENTWISE))

  # keras.ops functions recorded in functional graphs.
  x = keras.KerasTensor((None, 4, 4))
  unary = ["relu", "relu6", "sigmoid", "hard_sigmoid", "silu", "hard_silu",
           "gelu", "tanh", "abs", "square", "sqrt", "exp", "negative", "elu",
           "selu", "leaky_relu", "softplus", "softsign", "log_sigmoid",
           "sign", "mish", "erf", "log", "reciprocal", "rsqrt", "floor",
           "ceil", "round", "sin", "cos", "hard_tanh", "hard_shrink",
           "soft_shrink", "tanh_shrink", "squareplus", "celu", "glu_",
           "sparse_plus", "sparse_sigmoid", "relu_", "logical_not"]
  binary = ["add", "subtract", "multiply", "divide", "true_divide",
            "maximum", "minimum", "power", "floor_divide", "mod",
            "greater", "less", "equal", "not_equal", "greater_equal",
            "less_equal", "logical_and", "logical_or"]
  elementwise_ops = set()
  for name in unary + binary:
    fn = getattr(keras.ops, name, None)
    if fn is None:  # some exist only in newer Keras versions
      continue
    try:
      elementwise_ops.add(_op_class(fn, *((x,) if name in unary else (x, x))))
    except Exception:  # pylint: disable=broad-except
      continue
  elementwise_ops.add(_op_class(keras.ops.cast, x, "float16"))
  elementwise_ops.add(_op_class(keras.ops.clip, x, 0.0, 1.0))
  elementwise_ops.add(_op_class(keras.ops.where, x > 0, x, x))
  add(sorted(elementwise_ops, key=lambda c: c.__name__),
      LayerRule(elementwise_op_flow))
  add((_op_class(keras.ops.concatenate, [x, x], axis=-1),),
      LayerRule(_ops_concatenate_flow))
  add((_op_class(keras.ops.pad, x, ((0, 0), (1, 1), (0, 0))),),
      LayerRule(_ops_pad_flow))
  add((_op_class(keras.ops.split, x, 2, axis=-1),),
      LayerRule(_ops_split_flow, rebuild=_ops_split_rebuild))
  reductions = [keras.ops.mean, keras.ops.max, keras.ops.min, keras.ops.sum]
  add(tuple(_op_class(fn, x, axis=1) for fn in reductions),
      LayerRule(_ops_reduce_flow))
  add((_op_class(keras.ops.expand_dims, x, 1),
       _op_class(keras.ops.squeeze, keras.KerasTensor((None, 1, 4)), 1)),
      LayerRule(_ops_expand_squeeze_flow))
  add((_op_class(keras.ops.transpose, x, (0, 2, 1)),),
      LayerRule(_ops_transpose_flow))
  image = keras.KerasTensor((None, 4, 4, 3))
  add((_op_class(keras.ops.image.resize, image, (2, 2)),),
      LayerRule(ELEMENTWISE))
  add((_op_class(keras.ops.reshape, x, (-1, 16)),),
      LayerRule(_ops_reshape_flow))


@functools.lru_cache(maxsize=None)
def residual_merges():
  """Layer and keras.ops classes of sum-like merges (Add, Subtract, Average,
  Maximum, Minimum; not Multiply): what makes a channel group residual."""
  x = keras.KerasTensor((None, 4))
  ops = tuple(_op_class(fn, x, x) for fn in (
      keras.ops.add, keras.ops.subtract, keras.ops.maximum, keras.ops.minimum))
  return _classes("Add", "Subtract", "Average", "Maximum", "Minimum") + ops


_STRING_FLOWS = {ELEMENTWISE: _elementwise_flow, FIXED: _fixed_flow,
                 PRODUCE: _producer_flow}


def flow_of(rule):
  """The flow function of a rule (strings resolved)."""
  return _STRING_FLOWS.get(rule.channels, rule.channels) \
      if isinstance(rule.channels, str) else rule.channels
