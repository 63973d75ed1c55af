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
as (benchmarks/inference_speed/run.py `--fold_batchnorm`).

`export_tflite` writes a TensorFlow Lite flatbuffer (float32, or quantised)
of a Keras model, BatchNormalization folded first by default, and checks it
in the TFLite interpreter against the Keras model. The route it takes was
chosen by measurement with TensorFlow 2.21 and Keras 3.15:
`tf.lite.TFLiteConverter.from_concrete_functions` on a `tf.function` of a
Keras 3 model converts without an error but drops the variables: the
flatbuffer holds no weights and the interpreter returns NaN.
`from_keras_model` works, but writes a SavedModel with an endpoint of
TensorFlow's choosing, prints it to stdout, and falls back silently to a
legacy path if that fails. So the model is written with
`keras.export.ExportArchive` as a SavedModel whose one endpoint calls
`model(..., training=False)` with a dynamic batch dimension, and converted
with `from_saved_model`.
"""

import math
import os
import re
import tempfile
import warnings

from absl import logging
import keras
import numpy as np

from keras_epi import _backend as backend
from keras_epi import _functional as functional
from keras_epi import _keras_internals as internals
from keras_epi import _weights as weights_lib
from keras_epi import layers as layers_lib

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


QUANTIZE_MODES = (None, "dynamic", "float16", "int8")
SIGNATURE_KEY = "serving_default"
# TensorFlow 2.21 still ships tf.lite.Interpreter, with this warning that
# it moves to the ai_edge_litert package (used instead where installed).
_INTERPRETER_DEPRECATED = r"\s*Warning: tf.lite.Interpreter is deprecated"


def export_tflite(model, path, *, quantize=None, representative_data=None,
                  fold_batchnorm=True, check_data=None, atol=1e-5, rtol=1e-5):
  """Writes `model` as a TensorFlow Lite flatbuffer, optionally checked.

  The model is converted for inference (`training=False`), with
  BatchNormalization folded into the layers before it first when
  `fold_batchnorm` is set (see `fold_batchnorm`). TFLite's converter also
  folds a BatchNormalization that follows a convolution (measured: a CIFAR
  ResNet-20 gives the same ops, 21 CONV_2D and no BN, either way), so the
  default mostly decides whose folding arithmetic the flatbuffer holds;
  `False` leaves it to the converter. The route (a SavedModel written by
  `keras.export.ExportArchive`, converted with
  `tf.lite.TFLiteConverter.from_saved_model`) is explained in the module
  docstring. The flatbuffer has one signature, ``"serving_default"``, with a
  dynamic batch dimension. Its inputs are named after the model's `Input`
  names (``input_<i>`` where a name is not a valid identifier or repeats);
  its outputs are ``output_0``, ``output_1``, ... in the order of
  `keras.tree.flatten(model.outputs)`.

  Quantisation (`quantize`), as TFLite's converter does it:

  - `None`: float32 weights and arithmetic.
  - `"dynamic"`: dynamic-range quantisation: weights of tensors with at
    least 1,024 elements are stored as int8 (about 4x smaller) and
    activations are quantised on the fly where a kernel supports it.
  - `"float16"`: weights stored as float16 (about 2x smaller), computed in
    float32 on CPU.
  - `"int8"`: weights and activations int8, with activation ranges
    calibrated on `representative_data`; inputs and outputs stay float32,
    and ops without an int8 kernel stay float.

  When `check_data` is given, the flatbuffer is run in the TFLite
  interpreter on the whole batch and, if the batch has more than one
  example, on its first example alone (the input is resized each time), and
  compared with `model(check_data, training=False)`: the caller's model, so
  the check covers the folding too. For `quantize=None` the check fails
  where ``max|tflite - keras| > atol + rtol * max|keras|`` for an output
  (maxima over the output's values). The tolerance scales with the
  output's largest value rather than with each value, because float32
  rounding in a deep network grows with the size of the activations, and a
  value near zero is as exposed to it as a large one (our choice). A
  quantised model differs from the float one by design, by an amount that
  depends on the weights and the data, so for it the difference is only
  measured and returned, never compared with a tolerance; judge it on your
  task metric. Any model whose outputs are not
  finite where the Keras model's are, or have another shape, fails the
  check. The file is written only after the check passes.

  Args:
    model: A built functional or Sequential `keras.Model` (for example a
      model from `keras_epi.prune_model`). It is not modified.
    path: The `.tflite` file to write; its directory is created if needed.
    quantize: One of `None`, `"dynamic"`, `"float16"`, `"int8"` (above).
    representative_data: For `quantize="int8"` only, and needed there:
      calibration inputs, a NumPy array of examples (a list of arrays, one per
      model input, for a model with several inputs) fed one example at a
      time. A few hundred real examples are typical.
    fold_batchnorm: Fold inference BatchNormalization into the preceding
      convolutions and Dense layers before converting.
    check_data: `None`, or a NumPy batch of inputs (a list of arrays, one per
      model input, for a model with several inputs) to check the flatbuffer
      on; cast to the inputs' dtypes.
    atol: Absolute tolerance of the float32 check, >= 0.
    rtol: Relative tolerance of the float32 check, >= 0.

  Returns:
    The largest absolute difference between the TFLite and the Keras
    outputs over the checked batches and outputs, a float, or `None` when
    `check_data` is `None`.

  Raises:
    ImportError: where TensorFlow, which the conversion needs on every
      Keras backend, is not installed.
    ValueError: if an argument is invalid (the message names it), or if
      `model` has no defined inputs (a subclassed model).
    RuntimeError: if the check fails: the float32 model differs from the
      Keras model by more than the tolerance, or an output is not finite or
      has the wrong shape. Nothing is written then.

  Example:
  >>> error = keras_epi.export_tflite(pruned, "model.tflite", check_data=x[:8])
  >>> keras_epi.export_tflite(pruned, "model_dynamic.tflite",
  ...                         quantize="dynamic", check_data=x[:8])
  0.0021...
  """
  _tensorflow()  # before any work
  inputs = _model_inputs(model)
  path = os.fspath(path) if isinstance(path, (str, os.PathLike)) else path
  if not isinstance(path, str) or not path or os.path.isdir(path):
    raise ValueError(f"`path` must name a file to write, got {path!r}.")
  if quantize not in QUANTIZE_MODES:
    raise ValueError(f"`quantize` must be one of {QUANTIZE_MODES}, got "
                     f"{quantize!r}.")
  if (quantize == "int8") != (representative_data is not None):
    raise ValueError(
        "`representative_data` is needed with quantize='int8' and used only "
        f"there; got quantize={quantize!r} and representative_data="
        f"{'None' if representative_data is None else 'an array'}.")
  if not isinstance(fold_batchnorm, bool):
    raise ValueError(f"`fold_batchnorm` must be a bool, got "
                     f"{fold_batchnorm!r}.")
  for name, value in (("atol", atol), ("rtol", rtol)):
    if (isinstance(value, bool) or not isinstance(value, (int, float)) or
        not math.isfinite(value) or value < 0):
      raise ValueError(f"`{name}` must be a finite number >= 0, got "
                       f"{value!r}.")
  representative = (None if representative_data is None else
                    _input_arrays(inputs, representative_data,
                                  "representative_data"))
  check = (None if check_data is None else
           _input_arrays(inputs, check_data, "check_data"))

  deployed = _fold(model) if fold_batchnorm else model
  names = _input_names(inputs)
  content = _convert(deployed, inputs, names, quantize, representative)
  error = None
  if check is not None:
    error = _check(content, model, names, check,
                   None if quantize else (atol, rtol), quantize)
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  with open(path, "wb") as f:
    f.write(content)
  logging.info("Wrote %s (%s, %d bytes)%s.", path, quantize or "float32",
               len(content), "" if error is None else
               f", max |tflite - keras| {error:.3g}")
  return error


def _fold(model):
  # `export_tflite`'s argument `fold_batchnorm` hides the function there.
  return fold_batchnorm(model)


def _model_inputs(model):
  """The model's input KerasTensors, or a ValueError naming `model`."""
  if not isinstance(model, keras.Model):
    raise ValueError(f"`model` must be a keras.Model, got "
                     f"{type(model).__name__}.")
  try:
    inputs = keras.tree.flatten(model.inputs)
  except (AttributeError, ValueError):
    inputs = None
  if not inputs:
    raise ValueError(
        f"`model` ({model.name!r}, {type(model).__name__}) has no defined "
        "inputs: pass a built functional or Sequential model.")
  return inputs


def _input_names(inputs):
  """Signature input names: the Input names where they are usable."""
  names = []
  for i, tensor in enumerate(inputs):
    name = str(getattr(tensor, "name", "") or "")
    if not re.fullmatch(r"[A-Za-z][A-Za-z0-9_]*", name) or name in names:
      name = f"input_{i}"
    names.append(name)
  if len(set(names)) != len(names):  # a fallback collided with a real name
    names = [f"input_{i}" for i in range(len(inputs))]
  return names


def _input_arrays(inputs, data, argument):
  """`data` as a list of arrays, one per input, checked against `inputs`."""
  arrays = list(data) if isinstance(data, (list, tuple)) else [data]
  if len(arrays) != len(inputs):
    raise ValueError(f"`{argument}` must hold {len(inputs)} array(s), one "
                     f"per model input, got {len(arrays)}.")
  result = []
  for tensor, array in zip(inputs, arrays):
    array = np.asarray(array)
    want = tuple(tensor.shape)
    if (array.ndim != len(want) or array.shape[0] < 1 or
        any(w is not None and w != a for w, a in zip(want[1:],
                                                     array.shape[1:]))):
      raise ValueError(f"`{argument}` must be a non-empty batch of shape "
                       f"{want}, got an array of shape {array.shape}.")
    result.append(array.astype(keras.backend.standardize_dtype(
        tensor.dtype)))
  if len({a.shape[0] for a in result}) != 1:
    raise ValueError(f"`{argument}` arrays must have the same batch size, "
                     f"got {[a.shape[0] for a in result]}.")
  return result


def _convert(model, inputs, names, quantize, representative):
  """The flatbuffer's bytes (see the module docstring for the route)."""
  tf = _tensorflow()
  specs = [tf.TensorSpec(tensor.shape, tensor.dtype, name=name)
           for tensor, name in zip(inputs, names)]
  nested = len(inputs) > 1

  def serve(*tensors):
    outputs = model(list(tensors) if nested else tensors[0], training=False)
    return {f"output_{i}": t
            for i, t in enumerate(keras.tree.flatten(outputs))}

  archive = keras.export.ExportArchive()
  archive.track(model)
  archive.add_endpoint(SIGNATURE_KEY, serve, specs)
  with tempfile.TemporaryDirectory(prefix="keras_epi_tflite_") as directory:
    archive.write_out(directory, verbose=False)
    converter = tf.lite.TFLiteConverter.from_saved_model(
        directory, signature_keys=[SIGNATURE_KEY])
    if quantize is not None:
      converter.optimizations = [tf.lite.Optimize.DEFAULT]
    if quantize == "float16":
      converter.target_spec.supported_types = [tf.float16]
    if quantize == "int8":
      def examples():
        for i in range(representative[0].shape[0]):
          yield {name: array[i:i + 1]
                 for name, array in zip(names, representative)}
      converter.representative_dataset = examples
    with warnings.catch_warnings():  # int8 calibration runs an interpreter
      warnings.filterwarnings("ignore", message=_INTERPRETER_DEPRECATED)
      return converter.convert()


def _interpreter(content):
  """A TFLite interpreter: LiteRT's where installed, else TensorFlow's."""
  try:
    from ai_edge_litert import interpreter as litert  # pylint: disable=g-import-not-at-top
    return litert.Interpreter(model_content=content)
  except ImportError:
    pass
  with warnings.catch_warnings():
    warnings.filterwarnings("ignore", message=_INTERPRETER_DEPRECATED)
    return _tensorflow().lite.Interpreter(model_content=content)


def _tensorflow():
  """TensorFlow, which TFLite conversion needs (on any Keras backend)."""
  return backend.tensorflow("keras_epi.export_tflite (TFLite conversion)")


def _check(content, model, names, arrays, tolerance, quantize):
  """Max |tflite - keras| over the batch and its first example; raises
  RuntimeError where it fails (see `export_tflite`)."""
  runner = _interpreter(content).get_signature_runner(SIGNATURE_KEY)
  label = quantize or "float32"
  error = 0.0
  sizes = [arrays[0].shape[0]] + ([1] if arrays[0].shape[0] > 1 else [])
  for size in sizes:
    batch = [a[:size] for a in arrays]
    got = runner(**dict(zip(names, batch)))
    want = keras.tree.flatten(
        model(batch if len(batch) > 1 else batch[0], training=False))
    for i, expected in enumerate(want):
      expected = keras.ops.convert_to_numpy(expected).astype(np.float32)
      actual = np.asarray(got[f"output_{i}"], dtype=np.float32)
      where = f"output_{i} at batch size {size} ({label} TFLite model)"
      if actual.shape != expected.shape:
        raise RuntimeError(f"TFLite check failed: {where} has shape "
                           f"{actual.shape}, the Keras model's {expected.shape}.")
      if not np.all(np.isfinite(actual) | ~np.isfinite(expected)):
        raise RuntimeError(
            f"TFLite check failed: {where} is not finite where the Keras "
            "model's output is; the conversion lost the weights or an op.")
      diff = np.abs(actual - expected)
      error = max(error, float(np.max(diff)))
      if tolerance is not None:
        atol, rtol = tolerance
        limit = atol + rtol * float(np.max(np.abs(expected), initial=0.0))
        if np.max(diff, initial=0.0) > limit:
          raise RuntimeError(
              f"TFLite check failed: {where} differs from the Keras model "
              f"by up to {float(np.max(diff)):.3g}, more than atol={atol} + "
              f"rtol={rtol} * max|keras| = {limit:.3g}. Raise the tolerances "
              "if this is float rounding in a deep model; otherwise the "
              "conversion changed the model.")
  return error


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
    inputs = [functional.new_input(t) for t in model.inputs]
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

    new = functional.rebuild(model, inputs, operation_for, call_for)
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
    new = functional.layer_from_config(layer, config)
    if id(layer) in folds:
      self._folded_layers.append((layer, new, folds[id(layer)]))
    else:
      self._pairs.append((layer, new))
    return new


def _fold_pairs(model):
  """``{id(producer): its BatchNormalization, id(bn): None}`` for every
  BatchNormalization of `model` (not of nested models) that can be folded."""
  nodes = functional.topological_nodes(model)
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
    if (id(producer) in folds or readers[id(tensor)] != 1 or
        len(internals.inbound_nodes(producer)) != 1 or
        not layers_lib.folds_into(producer, bn, tuple(tensor.shape[1:]))):
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
      axis = weights_lib.output_axis(old, weight.name)
      if axis == "depthwise":
        value = value * scale.reshape(value.shape[-2:])
      elif axis is not None:
        value = np.moveaxis(np.moveaxis(value, axis, -1) * scale, -1, axis)
    weight.assign(value.astype(weight.dtype))
