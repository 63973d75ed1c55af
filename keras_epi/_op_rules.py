"""The built-in rules of keras.ops operations recorded in functional graphs
(internal; the layers' rules are `keras_epi._builtin_layers`, whose sum-like
merges, the residual ones, come first and keep their rule): elementwise
operations, and the concatenations, pads, splits, reductions, reshapes and
transposes that pass a channel axis on or keep it whole.
"""

import keras
import numpy as np

from keras_epi import _builtin_layers
from keras_epi import layers

_Rule = layers.LayerRule


# -- flows --------------------------------------------------------------------


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
    return layers.fixed_flow(op, call)
  return [x]


def _ops_split_flow(op, call):
  x = call.inputs[0]
  ndim = len(call.input_shapes[0]) + 1
  if op.axis % ndim != ndim - 1:
    return [x for _ in call.output_shapes]
  ends = np.cumsum([s[-1] for s in call.output_shapes])
  return [x[end - s[-1]:end] for s, end in zip(call.output_shapes, ends)]


def _ops_split_rebuild(op, masks, call):
  """A Split at the kept offsets when it cuts the channel axis."""
  del call
  outs = masks["outs"]
  if len(outs) < 2 or sum(len(m) for m in outs) != len(masks["in"]):
    return op  # a split along another axis
  kept = [int(m.sum()) for m in outs]
  if isinstance(op.indices_or_sections, int) and len(set(kept)) == 1:
    return op
  return type(op)([int(k) for k in np.cumsum(kept)[:-1]], axis=op.axis)


def _ops_reduce_flow(op, call):
  x = call.inputs[0]
  if _builtin_layers.over_channels(op.axis, call.input_shapes[0]):
    return layers.fixed_flow(op, call)
  return [x]


def _ops_expand_squeeze_flow(op, call):
  x = call.inputs[0]
  in_shape, out_shape = call.input_shapes[0], call.output_shapes[0]
  if out_shape and in_shape and out_shape[-1] == in_shape[-1] == len(x):
    return [x]
  return layers.fixed_flow(op, call)


def _ops_reshape_flow(op, call):
  """A keras.ops.reshape that keeps the channel axis (the same width last,
  row-major) passes the channels (`_ops_reshape_rebuild` writes the new
  width); others keep them whole."""
  newshape = op.newshape if isinstance(op.newshape, (list, tuple)) else ()
  x = call.inputs[0]
  if (newshape and newshape[-1] in (-1, len(x)) and
      call.output_shapes[0][-1] == call.input_shapes[0][-1] == len(x)):
    return [x]
  return layers.fixed_flow(op, call)


def _ops_reshape_rebuild(op, masks, call):
  """The reshape for the kept width. A batch size traced as None (from
  ``ops.shape(x)[0]`` in a composite layer's `call`) becomes -1 where the
  rest of the shape is known, so the graph runs at any batch size."""
  shape = list(op.newshape) if isinstance(op.newshape, (list, tuple)) else []
  out = masks["out"]
  if not shape or (None not in shape and (shape[-1] == -1 or out.all())):
    return op
  per_example = list(call.out_shapes[0])  # its open size filled in
  per_example[-1] = int(out.sum())
  if None not in per_example:
    shape = [-1, *per_example]
  elif shape.count(None) + shape.count(-1) == 1:
    shape = [-1 if d is None else d for d in shape]
    shape[-1] = shape[-1] if shape[-1] == -1 else int(out.sum())
  return type(op)(tuple(shape))


def _ops_transpose_flow(op, call):
  axes = op.axes
  ndim = len(call.input_shapes[0]) + 1
  if axes is not None and tuple(axes)[-1] % ndim == ndim - 1:
    return [call.inputs[0]]
  return layers.fixed_flow(op, call)


def register():
  """Fills the registry with the keras.ops rules (`layers.rule_for` calls
  it once, lazily, after `_builtin_layers.register`: keras.ops are traced
  here, not at import)."""

  def add(classes, rule):
    for cls in classes:
      layers.add_builtin(cls, rule)

  x = keras.KerasTensor((None, 4, 4))
  unary = [
      "relu", "relu6", "sigmoid", "hard_sigmoid", "silu", "hard_silu", "gelu",
      "tanh", "abs", "square", "sqrt", "exp", "negative", "elu", "selu",
      "leaky_relu", "softplus", "softsign", "log_sigmoid", "sign", "mish",
      "erf", "log", "reciprocal", "rsqrt", "floor", "ceil", "round", "sin",
      "cos", "hard_tanh", "hard_shrink", "soft_shrink", "tanh_shrink",
      "squareplus", "celu", "glu_", "sparse_plus", "sparse_sigmoid", "relu_",
      "logical_not"
  ]
  binary = [
      "add", "subtract", "multiply", "divide", "true_divide", "maximum",
      "minimum", "power", "floor_divide", "mod", "greater", "less", "equal",
      "not_equal", "greater_equal", "less_equal", "logical_and", "logical_or"
  ]
  elementwise_ops = set()
  for name in unary + binary:
    fn = getattr(keras.ops, name, None)
    if fn is None:  # some exist only in newer Keras versions
      continue
    try:
      elementwise_ops.add(_builtin_layers.op_class(fn, *((x,) if name in unary else (x, x))))
    except Exception:  # pylint: disable=broad-except
      continue
  elementwise_ops.add(_builtin_layers.op_class(keras.ops.cast, x, "float16"))
  elementwise_ops.add(_builtin_layers.op_class(keras.ops.clip, x, 0.0, 1.0))
  elementwise_ops.add(_builtin_layers.op_class(keras.ops.where, x > 0, x, x))
  add(sorted(elementwise_ops, key=lambda c: c.__name__),
      _Rule(layers.elementwise_op_flow))
  add((_builtin_layers.op_class(keras.ops.concatenate, [x, x], axis=-1),),
      _Rule(_ops_concatenate_flow))
  add((_builtin_layers.op_class(keras.ops.pad, x, ((0, 0), (1, 1), (0, 0))),),
      _Rule(_ops_pad_flow))
  add((_builtin_layers.op_class(keras.ops.split, x, 2, axis=-1),),
      _Rule(_ops_split_flow, rebuild=_ops_split_rebuild))
  reductions = [keras.ops.mean, keras.ops.max, keras.ops.min, keras.ops.sum]
  add(
      tuple(_builtin_layers.op_class(fn, x, axis=1) for fn in reductions),
      _Rule(_ops_reduce_flow))
  add((_builtin_layers.op_class(keras.ops.expand_dims, x, 1),
       _builtin_layers.op_class(keras.ops.squeeze, keras.KerasTensor((None, 1, 4)), 1)),
      _Rule(_ops_expand_squeeze_flow))
  add((_builtin_layers.op_class(keras.ops.transpose, x, (0, 2, 1)),),
      _Rule(_ops_transpose_flow))
  image = keras.KerasTensor((None, 4, 4, 3))
  add((_builtin_layers.op_class(keras.ops.image.resize, image, (2, 2)),),
      _Rule(layers.ELEMENTWISE))
  # Products and softmax over the channels mix them (attention scores).
  add((_builtin_layers.op_class(keras.ops.matmul, x, keras.KerasTensor((None, 4, 4))),
       _builtin_layers.op_class(keras.ops.softmax, x)), _Rule(layers.FIXED))
  add((_builtin_layers.op_class(keras.ops.reshape, x, (-1, 16)),),
      _Rule(_ops_reshape_flow, rebuild=_ops_reshape_rebuild, reshape=True))


layers.load_builtins(register)
