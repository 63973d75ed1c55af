"""Rewrites for deployment: fold inference BatchNormalization into convolutions.

At inference a BatchNormalization is a per-channel affine map,
``y = gamma * (x - mean) / sqrt(var + eps) + beta``. When its input is the
output of a linear convolution or Dense layer that nothing else reads, the
map can be folded into that layer's kernel and bias::

  scale = gamma / sqrt(moving_variance + epsilon)
  kernel' = kernel * scale        (along the layer's output-channel axis)
  bias'   = (bias - moving_mean) * scale + beta

which removes the normalisation's element-wise passes over the activations,
and leaves Conv + BiasAdd + activation, a pattern TensorFlow's graph optimiser
fuses into one kernel. On CPU, where small networks spend much of their time
in such per-activation passes, this is what a deployed model should be timed
as (benchmarks/inference_speed.py `--fold_batchnorm`).
"""

import keras
import numpy as np

from keras_epi import _keras_internals as internals
from keras_epi import graph
from keras_epi import surgeon

_L = keras.layers


def fold_batchnorm(model):
  """Returns an inference copy of `model` with BatchNormalization folded in.

  Every BatchNormalization whose input is the output of a convolution (any
  kind: Conv1D/2D/3D with any `groups`, transposed, depthwise, separable;
  `channels_last`) or Dense layer with a linear activation, read by nothing
  else, normalising the last (channel) axis, is folded into the layer (see
  the module docstring for the formula): the layer gets a bias if it had none,
  and the BatchNormalization becomes a `keras.layers.Identity` with the same
  name, so layer names and the model's structure stay the same. Other
  layers, nested models included, are copied with their weights.

  The copy computes what `model(x, training=False)` computes, up to float
  rounding; it is for inference and export only (training it would not train
  a BatchNormalization any more). The input model is not modified and shares
  no variables with the result, which saves as `.keras` and loads back
  without custom objects.

  Args:
    model: A built functional or Sequential `keras.Model`.

  Returns:
    A new `keras.Model`. Its attribute `folded_batchnorms` lists the paths
    (``"nested/layer"``) of the BatchNormalization layers folded.

  Raises:
    ValueError: if `model` is not a functional or Sequential Keras model.

  Example:
  >>> deployed = keras_epi.fold_batchnorm(pruned_model)
  >>> deployed.export("saved_model")
  """
  folder = _Folder()
  new = folder.model(model, "")
  new.folded_batchnorms = list(folder.folded)
  return new


class _Folder:
  """Rebuilds models, folding the pairs it finds; memoised per model."""

  def __init__(self):
    self._models = {}  # id(old model) -> new model
    self._pairs = []  # (old layer, new layer) to copy weights between
    self._folded_layers = []  # (old producer, new producer, batchnorm)
    self.folded = []

  def model(self, model, prefix):
    if id(model) in self._models:
      return self._models[id(model)]
    folds = _fold_pairs(model)  # id(producer) -> batchnorm, id(bn) -> None
    inputs = [graph.new_input(t) for t in model.inputs]
    new_layers = {}

    def operation_for(op):
      if isinstance(op, keras.Model):
        return self.model(op, prefix + op.name + "/")
      if not isinstance(op, keras.layers.Layer):
        return op  # a stateless keras.ops operation
      if id(op) not in new_layers:
        new_layers[id(op)] = self._layer(op, folds, prefix)
      return new_layers[id(op)]

    def call_for(op):  # a folded BN's Identity takes no `training`, `mask`
      new_op = operation_for(op)
      if isinstance(new_op, _L.Identity):
        return lambda inputs, **unused_kwargs: new_op(inputs)
      return new_op

    new = graph.rebuild(model, inputs, operation_for, call_for)
    self._models[id(model)] = new
    if not prefix:
      for old, new_layer in self._pairs:
        new_layer.set_weights(old.get_weights())
      for old, new_layer, bn in self._folded_layers:
        _load_folded(old, new_layer, bn)
    return new

  def _layer(self, layer, folds, prefix):
    if id(layer) in folds and folds[id(layer)] is None:  # a folded BN
      self.folded.append(prefix + layer.name)
      return _L.Identity(name=layer.name, dtype=layer.dtype_policy.name)
    config = layer.get_config()
    if id(layer) in folds:
      config["use_bias"] = True
    new = surgeon.layer_from_config(layer, config)
    if id(layer) in folds:
      self._folded_layers.append((layer, new, folds[id(layer)]))
    else:
      self._pairs.append((layer, new))
    return new


def _fold_pairs(model):
  """``{id(producer): its BatchNormalization, id(bn): None}`` for every
  BatchNormalization of `model` (not of nested models) that can be folded."""
  nodes = graph.topological_nodes(model)
  readers = {}
  for node in nodes:
    for t in node.input_tensors:
      readers[id(t)] = readers.get(id(t), 0) + 1
  for t in keras.tree.flatten(model.outputs):
    readers[id(t)] = readers.get(id(t), 0) + 1
  folds = {}
  for node in nodes:
    bn = node.operation
    if not isinstance(bn, _L.BatchNormalization) or \
        len(node.input_tensors) != 1 or len(internals.inbound_nodes(bn)) != 1:
      continue
    if internals.node_arguments(node)[1].get("training") is True:
      continue
    tensor = node.input_tensors[0]
    producer = internals.history(tensor).operation
    if (not surgeon.rule_of(producer).linear or id(producer) in folds or
        len(internals.inbound_nodes(producer)) != 1 or
        readers[id(tensor)] != 1 or
        producer.activation is not keras.activations.linear):
      continue
    ndim = len(tensor.shape)
    axes = bn.axis if isinstance(bn.axis, (list, tuple)) else [bn.axis]
    if (getattr(producer, "data_format", "channels_last") != "channels_last"
        or len(axes) != 1 or axes[0] % ndim != ndim - 1):
      continue
    folds[id(producer)] = bn
    folds[id(bn)] = None
  return folds


def _load_folded(old, new, bn):
  """Sets `new`'s weights to `old`'s with `bn` folded in."""
  n = new.bias.shape[0]
  stats = {w.name: keras.ops.convert_to_numpy(w).astype(np.float64)
           for w in bn.weights}
  gamma = stats.get("gamma", np.ones(n))
  beta = stats.get("beta", np.zeros(n))
  scale = gamma / np.sqrt(stats["moving_variance"] + bn.epsilon)
  shift = beta - stats["moving_mean"] * scale
  values = {w.name: keras.ops.convert_to_numpy(w).astype(np.float64)
            for w in old.weights}
  bias = values.pop("bias", np.zeros(n))
  for weight in new.weights:
    if weight.name == "bias":
      value = bias * scale + shift
    else:
      value = values[weight.name]
      axis = surgeon.output_axis(old, weight.name)
      if axis == "depthwise":
        value = value * scale.reshape(value.shape[-2:])
      elif axis is not None:
        value = np.moveaxis(np.moveaxis(value, axis, -1) * scale, -1, axis)
    weight.assign(value.astype(weight.dtype))
