"""The pruned model's call check (internal): the surgeon calls every model it
builds before handing it back, and names the layer that fails.
"""

import keras
import numpy as np

from keras_epi import _functional as functional
from keras_epi import _keras_internals as internals

CHECK_BATCH_SIZES = (1, 2)
_OPEN_SIZE = 32  # per open input size in the check


def check_calls(old, new, plan):
  """Calls the pruned model `new` on random inputs at `CHECK_BATCH_SIZES`
  (open input sizes at `_OPEN_SIZE`, or the analysis' sizes): each output
  must have the shape of `old`'s (a plan keeps outputs whole). A failure is
  a ValueError naming the layer that fails, so no model that breaks when
  called is handed back."""
  shapes = plan.analysis.input_shapes
  rng = np.random.default_rng(0)
  for batch in CHECK_BATCH_SIZES:
    xs = []
    for tensor, shape in zip(new.inputs, shapes):
      size = (batch, *[_OPEN_SIZE if d is None else d for d in shape])
      value = (rng.normal(size=size) if "float" in str(tensor.dtype)
               else np.zeros(size))
      xs.append(value.astype(tensor.dtype))
    try:
      outputs = new(_as_inputs(new, xs), training=False)
    except Exception as e:  # pylint: disable=broad-except
      if calls(old, _as_inputs(old, xs)) is None:
        continue  # the model itself does not run at this batch size
      _name_the_failing_layer(new, xs, e)
      raise  # not reached: _name_the_failing_layer raises
    for got, want in zip(keras.tree.flatten(outputs), old.outputs):
      expected = (batch, *want.shape[1:])
      if any(e is not None and e != g
             for e, g in zip(expected, tuple(got.shape))) or len(
                 got.shape) != len(expected):
        raise ValueError(
            f"keras_epi: the pruned model '{new.name}' gives an output of "
            f"shape {tuple(got.shape)} at batch size {batch}; the model "
            f"gives {expected}. Please report this; pass the layers before "
            "that output in `ignore=` meanwhile.")


def calls(op, inputs):
  """`op(inputs)` in inference mode, or None where it fails."""
  try:
    return op(inputs, training=False)
  except Exception:  # pylint: disable=broad-except
    return None


def _as_inputs(model, xs):
  """`xs` in the structure `model` was built with (a list of one input is
  passed as a list, so Keras does not warn that the structures differ)."""
  if isinstance(model, keras.Sequential):
    return xs[0]
  return keras.tree.pack_sequence_as(internals.inputs_struct(model), xs)


def _name_the_failing_layer(model, xs, error):
  """Calls `model`'s operations one by one on `xs`; raises a ValueError
  naming the first that fails (or `error`'s message if none does)."""
  def wrap(op):
    return named(op, op.name, type(op).__name__,
                 f"fails when called (at batch size {len(xs[0])})")
  if isinstance(model, keras.Sequential):
    h = xs[0]
    for layer in model.layers:
      h = wrap(layer)(h)
  else:
    functional.replay(model, xs, wrap)
  raise ValueError(
      f"keras_epi: the pruned model '{model.name}' fails when called: "
      f"{type(error).__name__}: {error}") from error


def named(op, path, class_name, failure):
  """`op`, called so that a failure is a ValueError naming the layer at
  `path` with the fix."""
  def call(*args, **kwargs):
    try:
      return op(*args, **kwargs)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"keras_epi: layer '{path}' ({class_name}) {failure}: "
          f"{type(e).__name__}: {first_line(e)} Keep its channels with "
          f"ignore=[{path!r}], or register it (keras_epi.register_layer) "
          "with the weights that follow its channels.") from e
  return call


def first_line(error):
  """The first line of an error's message (Keras' run to many)."""
  lines = str(error).strip().splitlines()
  return lines[0] if lines else type(error).__name__
