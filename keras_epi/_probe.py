"""Probing a layer that no registry rule covers (internal).

A layer without sublayers whose every output channel is shown, on random
data, to depend on the same channel of its inputs only (a LayerScale, a
custom per-channel affine map) is elementwise: `auto_rule` gives it a rule
whose weights with the channel axis last are cut along it, and the surgeon
checks the rebuilt layer numerically. Other layers are kept whole, with a
warning. Results are cached per layer class, config and input shapes (at
most `_CACHE_SIZE`; weights do not enter: the surgeon checks every probed
layer again with its own weights).
"""

import collections
import json

from absl import logging
import keras
import numpy as np

from keras_epi import _keras_internals as internals
from keras_epi import layers as layers_lib

_L = keras.layers
_CACHE_SIZE = 1024


def auto_rule(op, node, in_shapes, out_shapes, unsupported, path):
  """The rule for a layer that no rule covers and that has no sublayers.

  Probes the layer numerically (`probe_elementwise`): a layer whose every
  output channel depends on the same channel of its inputs only is
  elementwise, with the weights whose last axis is the channel axis cut
  along it; the surgeon checks the rebuilt layer against the original on
  random data. Other layers are kept whole (fixed), with a warning.
  """
  try:
    key = _probe_key(op, in_shapes)
    if key is not None and key in _PROBED:
      elementwise = _PROBED[key]
      _PROBED.move_to_end(key)
    else:
      elementwise = probe_elementwise(op, node, in_shapes, out_shapes)
      if key is not None:
        _PROBED[key] = elementwise
        while len(_PROBED) > _CACHE_SIZE:
          _PROBED.popitem(last=False)
  except Exception as e:  # pylint: disable=broad-except
    unsupported[path] = (
        f"{type(op).__name__}: unknown layer type, and calling it on random "
        f"data to find out failed ({type(e).__name__}: {e})")
    return layers_lib.IGNORED
  if not elementwise:
    logging.log_first_n(
        logging.WARNING,
        "keras_epi: layer '%s' (%s) mixes its channels; its input and output "
        "channels are kept whole. If it creates new channels like a "
        "convolution, register it: keras_epi.register_layer(%s, "
        "channels='produce', weights=..., width=...).", 20, path,
        type(op).__name__, type(op).__name__)
    return layers_lib.IGNORED
  if not isinstance(op, _L.Layer):  # a keras.ops operation: stateless
    return layers_lib.LayerRule(layers_lib.elementwise_op_flow)
  channels = out_shapes[0][-1]
  weights = {}
  for weight in op.weights:
    shape = tuple(weight.shape)
    if shape and shape[-1] == channels and channels > 1:
      if channels in shape[:-1]:
        unsupported[path] = _ambiguous(op, weight)
        return layers_lib.IGNORED
      weights[weight.name] = ((-1, "out"),)
    elif channels in shape and channels > 1:
      unsupported[path] = _ambiguous(op, weight)
      return layers_lib.IGNORED
  return layers_lib.LayerRule(layers_lib.ELEMENTWISE, weights, auto=True)


_PROBED = collections.OrderedDict()  # (class, config, shapes) -> bool


def _probe_key(op, in_shapes):
  try:
    config = {k: v for k, v in op.get_config().items() if k != "name"}
    config = json.dumps(config, sort_keys=True, default=str)
  except Exception:  # pylint: disable=broad-except
    return None
  return (type(op), config, tuple(tuple(s) for s in in_shapes))


def _ambiguous(op, weight):
  name = type(op).__name__
  return (f"{name}: acts on each channel alone, but its weight "
          f"'{weight.name}' {tuple(weight.shape)} carries the channels on an "
          "axis other than the last. Register it, e.g. "
          f"keras_epi.register_layer({name}, channels='elementwise', "
          f"weights={{{weight.name!r}: AXIS}})")


def probe_elementwise(op, node, in_shapes, out_shapes, trials=4, seed=0):
  """Whether every output channel of `op` depends only on the same channel
  of each input, found by perturbing random channel subsets (internal).

  Returns False for a layer with several outputs or whose output width
  differs from its inputs'.
  """
  if len(out_shapes) != 1 or not out_shapes[0]:
    return False
  channels = out_shapes[0][-1]
  tensors = [t for t in keras.tree.flatten(internals.node_arguments(node))
             if isinstance(t, keras.KerasTensor)]
  if channels is None or any(
      not s or s[-1] not in (1, channels) for s in in_shapes):
    return False
  rng = np.random.default_rng(seed)

  def concrete(shape, dtype):
    shape = (2, *[5 if d is None else d for d in shape])
    if "int" in str(dtype):
      return rng.integers(0, 3, shape).astype(dtype)
    return rng.normal(size=shape).astype(dtype)

  values = [concrete(s, t.dtype) for s, t in zip(in_shapes, tensors)]

  def run(vals):
    args, kwargs = internals.fill_in(
        node, {id(t): v for t, v in zip(tensors, vals)})
    out = keras.tree.flatten(op(*args, **kwargs))
    return np.asarray(keras.ops.convert_to_numpy(out[0]), np.float64)

  base = run(values)
  if base.shape[-1] != channels:
    return False
  for k, value in enumerate(values):
    if value.shape[-1] == 1:
      continue
    for _ in range(trials):
      chosen = rng.random(channels) < 0.5
      changed = [v.copy() for v in values]
      noise = rng.normal(size=value.shape).astype(value.dtype)
      changed[k] = value + noise * chosen.astype(value.dtype)
      diff = np.abs(run(changed) - base) > 1e-5 * (1.0 + np.abs(base))
      moved = diff.reshape(-1, channels).any(axis=0)
      if (moved & ~chosen).any():
        return False
  return True
