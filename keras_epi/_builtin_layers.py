"""The built-in table of the layer registry (internal): one rule per Keras
layer family, with its flow function, MAC formula and config rewrite (the
keras.ops operations' rules are `keras_epi._op_rules`, the attention
layers' `keras_epi._attention_layers`). `keras_epi.layers` loads it on the
first lookup; a user's `keras_epi.register_layer` takes precedence for the
same class.
"""

import math

import keras
import numpy as np

from keras_epi import _keras_internals as internals
from keras_epi import layers

_L = keras.layers
_Rule = layers.LayerRule


# -- flows --------------------------------------------------------------------


def _normalised_axes(axis, ndim):
  axes = axis if isinstance(axis, (list, tuple)) else [axis]
  return sorted(a % ndim for a in axes)


def over_channels(axis, shape):
  """Whether `axis` (of a per-example `shape`, batch added) includes the
  channel axis."""
  ndim = len(shape) + 1
  if axis is None:
    return True
  return ndim - 1 in _normalised_axes(axis, ndim)


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
  return [layers.activation_fixes(layer, out, call)]


def _depthwise_flow(layer, call):
  out = np.repeat(call.inputs[0], layer.depth_multiplier)
  return [layers.activation_fixes(layer, out, call)]


def _axis_flow(fixes_when_over_channels):
  """Elementwise unless the layer's `axis` covers the channels."""
  def flow(layer, call):
    x = call.inputs[0]
    if fixes_when_over_channels(layer, call):
      call.fix(x)
    return [x]
  return flow


def _batchnorm_fixes(layer, call):
  return not layers.over_channels_only(layer.axis, call.output_shapes[0])


def _axis_over_channels(layer, call):
  return over_channels(layer.axis, call.output_shapes[0])


def norm_rule(weights, axis_of=lambda layer: layer.axis):
  """The rule of a normalisation through which the model width may be cut
  (``through_norms=True``): elementwise where it normalises over the
  channel axis alone (its `weights`, one value per channel, are cut with
  the channels), kept whole otherwise. Not exact: the statistics of the
  kept channels leave out the removed ones."""
  def fixes(layer, call):
    return not layers.over_channels_only(axis_of(layer),
                                         call.output_shapes[0])
  return _Rule(_axis_flow(fixes), {w: ((-1, "out"),) for w in weights})


def embedding_flow(layer, call):
  """An Embedding (or a layer that embeds inputs kept whole, as a ViT's
  patch embedding) makes new channels, one per column of its table, from
  inputs kept whole. Called with ``reverse=True`` (keras_hub's
  ReversibleEmbedding, the tied output projection of an LM) it reads the
  channels of its input through the same table: kept whole there, so the
  table keeps its columns too (the first call names the cut)."""
  del layer
  for labels in call.inputs:
    call.fix(labels)
  reverse = call.keyword_arguments.get(
      "reverse", call.arguments[1] if len(call.arguments) > 1 else False)
  if reverse is not False:
    return [call.fixed(layers.width_of(s)) for s in call.output_shapes]
  return [call.produce(call.output_shapes[0][-1])]


def _rescaling_fixes(layer, call):
  del call
  return bool(np.ndim(layer.scale) or np.ndim(layer.offset))


def _group_norm_flow(layer, call):
  """GroupNormalization normalises each group of ``C / groups`` channels on
  its own: the channels of a group are removed together (whole groups,
  exactly), and the layer keeps its group size."""
  x = call.inputs[0]
  if not layers.over_channels_only(layer.axis, call.output_shapes[0]) or \
      len(x) % layer.groups:
    call.fix(x)
    return [x]
  size = len(x) // layer.groups
  call.unite(x, np.repeat(x[::size], size))
  return [x]


def _group_norm_config(layer, config, n_in, n_out):
  del n_in
  config["groups"] = n_out // (_channels(layer) // layer.groups)
  return config


def _channels(layer):
  """The channel count a built normalisation layer was built for."""
  for weight in layer.weights:
    return int(weight.shape[-1])
  return int(internals.inbound_nodes(layer)[0].input_tensors[0].shape[-1])


def _activation_flow(layer, call):
  return [layers.activation_fixes(layer, call.inputs[0], call)]


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
  return layers.fixed_flow(layer, call)


def _permute_flow(layer, call):
  if tuple(layer.dims)[-1] == len(layer.dims):
    return [call.inputs[0]]
  return layers.fixed_flow(layer, call)


def _concatenate_flow(layer, call):
  ndim = len(call.output_shapes[0]) + 1
  if layer.axis % ndim == ndim - 1:
    return [np.concatenate(call.inputs)]
  return [call.merge()]


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
    "Normalization", "RandomGrayscale", "RandomHue",
    "RandomSaturation", "RandomColorJitter", "RandomColorDegeneration",
    "AutoContrast", "Equalization", "RandAugment", "AugMix", "MixUp",
    "CutMix", "Pipeline",
    "Attention", "AdditiveAttention", "LSTM", "GRU",
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


def op_class(fn, *args, **kwargs):
  """The keras.ops Operation class behind a public function (by tracing)."""
  out = fn(*args, **kwargs)
  out = keras.tree.flatten(out)[0]
  return type(internals.history(out).operation)


def register():  # pylint: disable=too-many-statements
  """Fills the registry with the built-in rules (`layers.rule_for` calls
  it once, lazily: keras.ops are traced here, not at import)."""

  def add(classes, rule):
    for cls in classes:
      layers.add_builtin(cls, rule)

  conv = _classes("Conv1D", "Conv2D", "Conv3D")
  add(
      conv,
      _Rule(_conv_flow, _CONV_WEIGHTS, _conv_config, _conv_macs,
            filters=("kernel",), linear=True, data_format=True))
  add(
      _classes("Conv1DTranspose", "Conv2DTranspose", "Conv3DTranspose"),
      _Rule(layers.producer_flow, {
          "kernel": ((-2, "out"), (-1, "in")),
          "bias": ((0, "out"),)
      }, layers.width_config("filters"), _conv_transpose_macs,
            filters=("kernel",), linear=True, data_format=True))
  add(
      _classes("DepthwiseConv1D", "DepthwiseConv2D"),
      _Rule(_depthwise_flow, {
          "kernel": ((-2, "in"), ("depthwise", "out")),
          "bias": ((0, "out"),)
      }, None, _depthwise_macs, filters=("kernel",), linear=True,
            data_format=True))
  add(
      _classes("SeparableConv1D", "SeparableConv2D"),
      _Rule(
          layers.producer_flow, {
              "depthwise_kernel": ((-2, "in"),),
              "pointwise_kernel": ((-2, "mid"), (-1, "out")),
              "bias": ((0, "out"),)
          }, layers.width_config("filters"), _separable_macs,
          filters=("pointwise_kernel",), linear=True, data_format=True))
  add((_L.Dense,),
      _Rule(layers.producer_flow, {
          "kernel": ((0, "in"), (1, "out")),
          "bias": ((0, "out"),)
      }, layers.width_config("units"), _dense_macs, filters=("kernel",),
            linear=True))
  add(_classes("GroupNormalization"),
      _Rule(_group_norm_flow, {"gamma": ((0, "out"),), "beta": ((0, "out"),)},
            _group_norm_config))
  add((_L.BatchNormalization,),
      _Rule(_axis_flow(_batchnorm_fixes), _BN_WEIGHTS, follower=True))
  add((_L.PReLU,), _Rule(layers.ELEMENTWISE, {"alpha": ((-1, "out"),)}))
  add((_L.Activation,), _Rule(_activation_flow, follower=True))
  add(_classes("ReLU", "LeakyReLU", "ELU"),
      _Rule(layers.ELEMENTWISE, data_format=True, follower=True))
  add(_classes("UnitNormalization", "Softmax"),
      _Rule(_axis_flow(_axis_over_channels)))
  # Exact: kept whole. Through norms (approximate): a norm over the channels
  # alone passes them on, its scale and offset cut with them.
  for name, weights in (("LayerNormalization", ("gamma", "beta")),
                        ("RMSNormalization", ("scale",))):
    add(_classes(name), _Rule(_axis_flow(_axis_over_channels),
                              approximate=norm_rule(weights)))
  add((_L.Rescaling,), _Rule(_axis_flow(_rescaling_fixes)))
  add((_L.Embedding,), _Rule(
      embedding_flow, {"embeddings": ((-1, "out"),),
                        "reverse_embeddings": ((0, "out"),)},
      layers.width_config("output_dim"), filters=("embeddings",)))
  add(_classes(*_PER_CHANNEL_NAMES), _Rule(layers.ELEMENTWISE,
                                           data_format=True))
  add(_classes(*_MIXING_NAMES), _Rule(layers.FIXED))
  add((_L.Flatten,), _Rule(_flatten_flow, data_format=True))
  add((_L.Reshape,), _Rule(_reshape_flow, config=_reshape_config,
                           reshape=True))
  add((_L.Permute,), _Rule(_permute_flow))
  add((_L.Concatenate,), _Rule(_concatenate_flow))
  merges = _residual_merges()
  add([m for m in merges if issubclass(m, _L.Layer)],
      _Rule(layers.ELEMENTWISE, residual=True))
  add([m for m in merges if not issubclass(m, _L.Layer)],
      _Rule(layers.elementwise_op_flow, residual=True))
  add((_L.Multiply,), _Rule(layers.ELEMENTWISE))


def _residual_merges():
  """Layer and keras.ops classes of sum-like merges (Add, Subtract, Average,
  Maximum, Minimum; not Multiply): what makes a channel group residual."""
  x = keras.KerasTensor((None, 4))
  ops = tuple(
      op_class(fn, x, x) for fn in (keras.ops.add, keras.ops.subtract,
                                    keras.ops.maximum, keras.ops.minimum))
  return _classes("Add", "Subtract", "Average", "Maximum", "Minimum") + ops


layers.load_builtins(register)
