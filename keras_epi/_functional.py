"""Walking and rebuilding functional Keras graphs (internal).

How keras_epi reads a model: its nodes in topological order
(`topological_nodes`), a layer at a member path (`layer_at`), the graph
replayed with other operations (`replay`, `rebuild`), and a composite
layer's `call` traced into a functional model of its own sublayers
(`expand`). Keras' private structures are read through `_keras_internals`.
"""

import contextlib
import inspect
import weakref

import keras
import numpy as np

from keras_epi import _keras_internals as internals

_L = keras.layers


def layer_at(model, path):
  """The layer at a member path such as ``"nested_model/conv"`` (or
  ``"block/attention:heads"``, a side of the layer's own).

  Inside a composite layer, a layer its `call` makes anew on every call is
  not tracked: for it (it has no weights) the result is None."""
  layer = model
  for name in member_side(path)[0].split("/"):
    if isinstance(layer, keras.Model):
      layer = layer.get_layer(name)
    else:  # inside a composite layer
      layer = next((l for l in internals.sublayers(layer) if l.name == name),
                   None)
      if layer is None:
        return None
  return layer


def member_side(path):
  """``(layer path, side)`` of a member path: ``"out"`` (the layer's
  output channels), or the inner side after a ``":"``."""
  path, _, side = path.partition(":")
  return path, side or "out"


def topological_nodes(model):
  """Nodes of a functional model, each after the nodes it reads from."""
  check_model(model)
  saved = _EXPANSION_NODES.get(model)
  order, seen = [], set()
  stack = [(t, False) for t in reversed(model.outputs)]
  while stack:
    tensor_or_node, expanded = stack.pop()
    if expanded:
      order.append(tensor_or_node)
      continue
    node = saved[id(tensor_or_node)] if saved is not None else \
        internals.producing_node(tensor_or_node)
    if id(node) in seen:
      continue
    seen.add(id(node))
    stack.append((node, True))
    for t in reversed(node.input_tensors):
      stack.append((t, False))
  return order


def replay(model, inputs, operation_for):
  """Calls ``operation_for(op)`` in place of every operation of `model`.

  Args:
    model: A functional model.
    inputs: New tensors, one per `model.inputs`.
    operation_for: Maps an operation of `model` to the operation to call.

  Returns:
    The new outputs, with the structure of the model's outputs.
  """
  tensors = {id(old): new for old, new in zip(model.inputs, inputs)}
  for node in topological_nodes(model):
    if isinstance(node.operation, _L.InputLayer):
      continue
    args, kwargs = internals.fill_in(node, tensors)
    outputs = keras.tree.flatten(operation_for(node.operation)(*args,
                                                               **kwargs))
    for old, new in zip(node.outputs, outputs):
      tensors[id(old)] = new
  return keras.tree.map_structure(lambda t: tensors[id(t)],
                                  internals.outputs_struct(model))


def rebuild(model, inputs, operation_for, call_for=None, make=None):
  """A new model with `model`'s graph on new `inputs`.

  Args:
    model: A functional or Sequential model.
    inputs: New `keras.Input` tensors, one per `model.inputs`.
    operation_for: Maps an operation of `model` to its replacement.
    call_for: What to call in place of an operation of a functional graph
      (default `operation_for`); a Sequential model takes the layers of
      `operation_for`.
    make: ``make(inputs, outputs) -> model`` for a functional graph
      (default: a plain `keras.Model` with `model`'s name).

  Returns:
    The new model (Sequential if `model` is), with `model`'s name and
    `trainable`.
  """
  if isinstance(model, keras.Sequential):
    new = keras.Sequential(
        [inputs[0], *[operation_for(layer) for layer in model.layers]],
        name=model.name)
  else:
    outputs = replay(model, inputs, call_for or operation_for)
    inputs = keras.tree.pack_sequence_as(internals.inputs_struct(model),
                                         inputs)
    new = (make(inputs, outputs) if make is not None else
           keras.Model(inputs=inputs, outputs=outputs, name=model.name))
  if new.trainable != model.trainable:  # the setter sets every layer's too
    new.trainable = model.trainable
  return new


def new_input(tensor, shape=None):
  """A `keras.Input` like a model input `tensor` (same name), optionally
  with another per-example `shape`."""
  return keras.Input(
      shape=tuple(tensor.shape[1:]) if shape is None else tuple(shape),
      dtype=tensor.dtype, sparse=tensor.sparse,
      name=internals.history(tensor).operation.name)


def check_model(model):
  """A ValueError unless `model` is a built model with symbolic inputs and
  outputs (functional or Sequential)."""
  if not isinstance(model, keras.Model):
    raise ValueError(
        f"Expected a keras.Model, received {type(model).__name__}: {model!r}.")
  try:
    model.outputs  # pylint: disable=pointless-statement
  except (AttributeError, ValueError) as e:
    raise ValueError(
        f"Model '{model.name}' ({type(model).__name__}) has no symbolic "
        "inputs and outputs. Build it on `keras.Input` (functional) or give a "
        "Sequential model an input shape (`keras.Input` as its first layer). "
        "Subclassed models cannot be analysed.") from e
  if model.outputs is None:
    raise ValueError(
        f"Model '{model.name}' ({type(model).__name__}) is not built. Give it "
        "an input shape, e.g. start a Sequential model with `keras.Input`.")


_EXPANSIONS = weakref.WeakKeyDictionary()  # layer -> {shapes: model}
_EXPANSION_NODES = weakref.WeakKeyDictionary()  # model -> {id(tensor): node}


def expand(layer, node, in_shapes):
  """A functional model computing what a composite `layer` computes at
  `node`, made of the layer's own sublayers and keras.ops (internal).

  The layer's `call` is run on symbolic inputs of the shapes of the outer
  call, bypassing `__call__`, so every sublayer and keras.ops call in it
  becomes a graph node. The sublayers are the layer's own objects (the same
  variables). The graph nodes this records on them are taken off again (the
  model keeps its own record of them), so the caller's layers are left as
  they were. Cached per layer and input shapes.

  A `call` that cannot run on open sizes (a class token broadcast to the
  batch size, a causal mask made from the sequence length, as in keras_hub's
  TransformerDecoder) is traced again at a batch size of `FILLED_SIZE`,
  then with every open size set to it too: the graph then shows how the
  channels flow, and `filled_shapes` gives the per-example shapes it was
  traced at (the graph holds those sizes and the batch's; the layer's own
  `call` does not).
  """
  if len(internals.inbound_nodes(layer)) > 1:
    # One graph serves every call of a shared layer: open spatial sizes.
    in_shapes = [(*[None] * (len(s) - 1), s[-1]) if s else s
                 for s in in_shapes]
  key = tuple(tuple(s) for s in in_shapes)
  cache = _EXPANSIONS.setdefault(layer, {})
  if key in cache:
    return cache[key]
  try:
    model = _trace(layer, node, in_shapes)
  except Exception:  # pylint: disable=broad-except
    try:  # a batch size made from `ops.shape(x)[0]` (a class token)
      model = _trace(layer, node, in_shapes, batch=FILLED_SIZE)
      _FILLED[model] = [tuple(s) for s in in_shapes]
    except Exception:  # pylint: disable=broad-except
      filled = [tuple(FILLED_SIZE if d is None else d for d in s)
                for s in in_shapes]
      model = _trace(layer, node, filled, batch=FILLED_SIZE)
      _FILLED[model] = filled
  cache[key] = model
  return model


FILLED_SIZE = 8
_FILLED = weakref.WeakKeyDictionary()  # expansion -> shapes it was traced at


def filled_shapes(expansion):
  """The per-example input shapes an expansion was traced at where its
  layer's call could not run on open sizes (a fixed batch size, and open
  sizes filled where needed; see `expand`), else None."""
  return _FILLED.get(expansion)


def _trace(layer, node, in_shapes, batch=None):
  """`expand`'s functional model of `layer`'s call at `in_shapes` (and
  batch size `batch`)."""
  args, kwargs = internals.node_arguments(node)
  tensors = [t for t in keras.tree.flatten((args, kwargs))
             if isinstance(t, keras.KerasTensor)]
  inputs = {id(t): keras.Input(batch_shape=(batch, *shape), dtype=t.dtype,
                               name=f"{layer.name}_input_{i}")
            for i, (t, shape) in enumerate(zip(tensors, in_shapes))}
  new_args, new_kwargs = internals.fill_in(node, inputs)
  new_kwargs = {k: v for k, v in new_kwargs.items() if k != "training"}
  sublayers = _all_sublayers(layer)
  nodes = {}
  try:
    with _specs_taking_their_calls_arguments(sublayers):
      outputs = layer.call(*new_args, **new_kwargs)
    flat = keras.tree.flatten(outputs)
    if len(flat) != len(node.outputs) or any(
        not isinstance(t, keras.KerasTensor) for t in flat):
      raise ValueError("its call did not return symbolic tensors")
    model = keras.Model(list(inputs.values()), outputs, name=layer.name)
    for graph_node in topological_nodes(model):
      for t in graph_node.outputs:
        nodes[id(t)] = graph_node
  finally:
    recorded = {id(n) for n in nodes.values()}
    for sublayer in sublayers:
      internals.remove_nodes(sublayer, recorded)
  _EXPANSION_NODES[model] = nodes
  return model


@contextlib.contextmanager
def _specs_taking_their_calls_arguments(sublayers):
  """Within the `with`, a sublayer whose `compute_output_spec` does not
  take a keyword its `call` takes (keras_hub's CachedMultiHeadAttention
  inherits MultiHeadAttention's, without `cache`) gets it dropped there
  where it is None, so that the layer can be called on symbolic tensors."""
  patched = []
  for sub in sublayers:
    spec = sub.compute_output_spec
    try:
      accepted = inspect.signature(spec).parameters
    except (TypeError, ValueError):
      continue
    if any(p.kind is p.VAR_KEYWORD for p in accepted.values()):
      continue

    def compute_output_spec(*args, _spec=spec, _accepted=accepted, **kwargs):
      return _spec(*args, **{k: v for k, v in kwargs.items()
                             if k in _accepted or v is not None})
    sub.compute_output_spec = compute_output_spec
    patched.append(sub)
  try:
    yield
  finally:
    for sub in patched:
      vars(sub).pop("compute_output_spec", None)


def _all_sublayers(layer):
  found, stack = {}, list(internals.sublayers(layer))
  while stack:
    sub = stack.pop()
    if id(sub) not in found:
      found[id(sub)] = sub
      stack.extend(internals.sublayers(sub))
  return list(found.values())


def layer_from_config(layer, config):
  """A new, unbuilt layer of `layer`'s class made from `config`."""
  if isinstance(layer, _L.Lambda):
    # from_config refuses Python lambdas in safe mode; this one is the
    # caller's own object, so reuse its function.
    return _L.Lambda(name=config["name"], dtype=config.get("dtype"),
                     trainable=config["trainable"],
                     **internals.lambda_config(layer))
  return type(layer).from_config(config)


def check_input_shapes(model, input_shape, argument="input_shape"):
  """`input_shape` as a list of per-example shapes, one per model input,
  or None; a ValueError naming `argument` where it does not fit the model.

  `input_shape` is one shape (a model with one input) or a list of them;
  each must have the rank of its model input and agree with every size the
  model fixes, and may not leave a size open that the model leaves open.
  """
  if input_shape is None:
    return None
  check_model(model)
  expected = [tuple(t.shape[1:]) for t in model.inputs]
  shapes = input_shape
  if len(expected) == 1 and isinstance(shapes, (tuple, list)) and all(
      d is None or isinstance(d, (int, np.integer)) for d in shapes):
    shapes = [shapes]
  ok = isinstance(shapes, (list, tuple)) and len(shapes) == len(expected)
  if ok:
    shapes = [tuple(s) if isinstance(s, (list, tuple)) else s for s in shapes]
    ok = all(isinstance(s, tuple) and len(s) == len(e) and all(
        isinstance(d, (int, np.integer)) and not isinstance(d, bool) and
        d >= 1 and (m is None or m == d) for d, m in zip(s, e))
             for s, e in zip(shapes, expected))
  if not ok:
    raise ValueError(
        f"`{argument}` must give the per-example shape of every input of "
        f"model '{model.name}' (without the batch axis, every size known "
        f"and equal to the sizes the model fixes): the model's inputs are "
        f"{expected}; received {argument}={input_shape!r}.")
  return [tuple(int(d) for d in s) for s in shapes]
