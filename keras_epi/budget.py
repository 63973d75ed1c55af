"""Budgets of a sub-network: multiply-accumulate counts.

`count_macs` counts the multiply-accumulates of the layers that dominate a
CNN's cost: convolutions (plain, grouped, transposed, depthwise, separable)
and Dense layers, for one example. Normalisation, activations, pooling and
element-wise merges are not counted (they are a few percent of a CNN's MACs and
are not multiply-accumulates); this is the convention of most pruning papers.
"""

import math

from keras_epi import graph


def count_macs(model):
  """Multiply-accumulates of `model` for one example.

  Args:
    model: A built functional or Sequential `keras.Model` with known spatial
      input shape. Nested models are counted; a layer called twice counts
      twice.

  Returns:
    The MAC count, an `int`.

  Raises:
    ValueError: if a counted layer has an unknown input or output shape.

  Example:
  >>> keras_epi.count_macs(keras.applications.ResNet50(weights=None))
  3857973248
  """
  total = 0
  for path, op, node in graph.walk_calls(model):
    total += _layer_macs(path, op, node)
  return total


def _layer_macs(path, op, node):
  """MACs of one call of one layer; 0 for layers that are not counted."""
  if not isinstance(op, (*graph._CONV, *graph._CONV_TRANSPOSE,  # pylint: disable=protected-access
                         *graph._DEPTHWISE, *graph._SEPARABLE,  # pylint: disable=protected-access
                         graph._L.Dense)):  # pylint: disable=protected-access
    return 0
  in_shape = node.input_tensors[0].shape[1:]
  out_shape = node.outputs[0].shape[1:]
  if any(d is None for d in (*in_shape, *out_shape)):
    raise ValueError(
        f"count_macs: layer '{path}' ({type(op).__name__}) has an unknown "
        f"shape (input {in_shape}, output {out_shape}). Build the model with "
        "a fixed input shape, e.g. keras.Input((224, 224, 3)).")
  c_in, c_out = in_shape[-1], out_shape[-1]
  if isinstance(op, graph._L.Dense):  # pylint: disable=protected-access
    return math.prod(out_shape[:-1]) * c_in * c_out
  kernel = math.prod(op.kernel_size)
  if isinstance(op, graph._CONV_TRANSPOSE):  # pylint: disable=protected-access
    return math.prod(in_shape[:-1]) * c_in * c_out * kernel
  positions = math.prod(out_shape[:-1])
  if isinstance(op, graph._CONV):  # pylint: disable=protected-access
    return positions * kernel * (c_in // op.groups) * c_out
  if isinstance(op, graph._DEPTHWISE):  # pylint: disable=protected-access
    return positions * kernel * c_out
  mid = c_in * op.depth_multiplier  # separable: depthwise then pointwise
  return positions * (kernel * mid + mid * c_out)
