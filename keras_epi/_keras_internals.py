"""The only module of keras_epi that touches Keras' private structures.

Keras 3 has no public API for walking a functional graph node by node, for a
layer's sublayers or for a compiled model's compile arguments; these helpers
are where keras_epi reads them. Each names the attribute it reads, so a Keras
upgrade that moves one breaks here and nowhere else.
"""

# This module is where keras_epi reads Keras' private structures, so the
# one check that would flag each access is off here, and only here.
# pylint: disable=protected-access

import contextlib
import inspect
import json
import os
import types

import keras

def history(tensor):
  """``(operation, node_index, tensor_index)`` that made a KerasTensor."""
  return tensor._keras_history


def producing_node(tensor):
  """The graph node whose output `tensor` is."""
  op, node_index, _ = history(tensor)
  return op._inbound_nodes[node_index]


def inbound_nodes(op):
  """The nodes at which an operation was called on symbolic tensors."""
  return op._inbound_nodes


def fill_in(node, tensors):
  """``(args, kwargs)`` of a node's call with its tensors replaced from
  ``{id(old tensor): new value}``."""
  return node.arguments.fill_in(tensors)


def node_arguments(node):
  """``(args, kwargs)`` of a node's call, as recorded."""
  return node.arguments.args, node.arguments.kwargs


def inputs_struct(model):
  return model._inputs_struct


def outputs_struct(model):
  return model._outputs_struct


def compile_config(model):
  """The keyword arguments `model.compile` was called with."""
  return dict(model._compile_config.config)


def optimizer_variables_to_train(optimizer):
  """The variables an optimizer was built for (`apply`'s default)."""
  return optimizer._trainable_variables


def sublayers(layer):
  """The layers a (subclassed) layer tracks as attributes, not nested."""
  return list(getattr(layer, "_layers", ()))


def own_variables(layer):
  """The variables a layer made itself (not its sublayers')."""
  return (list(getattr(layer, "_trainable_variables", ())) +
          list(getattr(layer, "_non_trainable_variables", ())))


def override_symbolic_build(model, build):
  """Replaces `model._maybe_symbolic_build` (the multi-worker fix)."""
  original = model._maybe_symbolic_build
  model._maybe_symbolic_build = build(original)


def lambda_config(layer):
  """The pieces of a Lambda layer that `from_config` cannot rebuild safely."""
  return dict(function=layer.function, output_shape=layer._output_shape,
              mask=layer.mask, arguments=layer.arguments)


def remove_nodes(op, node_ids):
  """Takes the nodes whose ids are in `node_ids` off `op`'s node lists."""
  for name in ("_inbound_nodes", "_outbound_nodes"):
    nodes = getattr(op, name, None)
    if nodes:
      nodes[:] = [n for n in nodes if id(n) not in node_ids]


def backup_and_restore_checkpoint(callback):
  """(weights file, epochs done) of a `keras.callbacks.BackupAndRestore`'s
  latest checkpoint, or None."""
  weights = getattr(callback, "_weights_path", None)
  metadata = getattr(callback, "_training_metadata_path", None)
  if not (weights and metadata and os.path.exists(weights) and
          os.path.exists(metadata)):
    return None
  with open(metadata) as f:
    return weights, int(json.load(f)["epoch"])


def backup_and_restore_files(callback):
  """The checkpoint files a `keras.callbacks.BackupAndRestore` writes."""
  return [path for path in (
      getattr(callback, "_weights_path", None),
      getattr(callback, "_training_metadata_path", None),
      getattr(callback, "_prev_weights_path", None),
      getattr(callback, "_prev_training_metadata_path", None))
          if path is not None]


# Attributes a layer's tracking and graph keep; a copy makes its own.
_TRACKING = frozenset((
    "_tracker", "_trainable_variables", "_non_trainable_variables", "_layers",
    "_metrics", "_seed_generators", "_inbound_nodes", "_outbound_nodes",
    "build", "quantize", "_tracked", "_lock"))
# TensorFlow's checkpoint tracking on a Keras layer (the TensorFlow backend):
# the copy keeps its own. (Not every "_self_" name: keras_hub's
# TransformerDecoder has `_self_attention_layer_norm`.)
_TF_TRACKING = frozenset((
    "_self_name_based_restores", "_self_saveable_object_factories",
    "_self_setattr_tracking", "_self_unconditional_checkpoint_dependencies",
    "_self_unconditional_deferred_dependencies",
    "_self_unconditional_dependency_names", "_self_update_uid"))
_TRACKED_LISTS = ("_trainable_variables", "_non_trainable_variables",
                  "_layers", "_metrics", "_seed_generators")


class Copier:
  """Copies Keras objects as they are, not through their config: a layer
  keeps its class, attributes and `call`, with new variables holding the
  same values, so that the copy computes what the original computes and
  shares no state with it.

  `replacements` maps ``id(old object)`` to the object the copy uses in
  its place (a narrower sublayer made elsewhere). Layers, variables, seed
  generators and metrics are copied once each (memoised); containers are
  copied with their contents mapped; every other value (activations,
  initializers, regularizers, arrays, functions) is shared.
  """

  def __init__(self, replacements=None):
    self._memo = dict(replacements or {})
    self._owner = None  # the object whose attributes are being copied

  def use(self, old, new):
    """From now on, `new` stands in for `old` wherever a copy holds it."""
    self._memo[id(old)] = new

  def copy(self, value):
    """The copy of `value` (see the class docstring)."""
    key = id(value)
    if key in self._memo:
      return self._memo[key]
    if isinstance(value, keras.Variable):
      new = self._variable(value)
    elif isinstance(value, keras.random.SeedGenerator):
      new = keras.random.SeedGenerator(seed=value._initial_seed)
      new.state.assign(keras.ops.convert_to_numpy(value.state))
    elif isinstance(value, keras.metrics.Metric):
      new = type(value).from_config(value.get_config())
    elif isinstance(value, keras.layers.Layer):
      return self.layer(value)
    elif (inspect.ismethod(value) and self._owner is not None and
          value.__self__ is self._owner[0]):
      return types.MethodType(value.__func__, self._owner[1])
    elif type(value) in (list, tuple, set, frozenset) or _is_tracked(value):
      items = [self.copy(v) for v in value]
      kind = {"TrackedList": list, "TrackedSet": set}.get(
          type(value).__name__, type(value))
      return kind(items)
    elif isinstance(value, dict):
      return {k: self.copy(v) for k, v in value.items()}
    else:
      return value
    self._memo[key] = new
    return new

  def layer(self, layer):
    """A copy of `layer`: same class and attributes, new variables."""
    if id(layer) in self._memo:
      return self._memo[id(layer)]
    cls = type(layer)
    new = cls.__new__(cls)  # wraps `build` and `quantize` for `new`
    self._memo[id(layer)] = new
    keras.layers.Layer.__init__(
        new, name=layer.name, dtype=layer.dtype_policy,
        trainable=layer.trainable, autocast=layer.autocast)
    state = layer.__dict__
    self.set_attributes(layer, new, set())
    # The tracked state in the original's order (variables made with
    # add_weight but held by no attribute too), then locked as it was.
    for name in _TRACKED_LISTS:
      getattr(new, name)[:] = [self.copy(v) for v in state.get(name, ())]
    new._lock = state.get("_lock", False)
    if layer._tracker.locked:
      new._lock_state()
    return new

  def set_attributes(self, old, new, skip):
    """The copies of `old`'s attributes on `new`, but for tracking state
    and `skip`; a method bound to `old` is bound to `new`."""
    owner, self._owner = self._owner, (old, new)
    try:
      for name, value in old.__dict__.items():
        if name in _TRACKING or name in skip or name in _TF_TRACKING:
          continue
        setattr(new, name, self.copy(value))
    finally:
      self._owner = owner

  def _variable(self, variable):
    value = keras.ops.convert_to_numpy(variable)
    with contextlib.ExitStack() as scopes:  # the original's path
      for part in variable.path.split("/")[:-1]:
        scopes.enter_context(keras.name_scope(part))
      new = keras.Variable(
          value, dtype=variable.dtype, trainable=variable.trainable,
          autocast=variable._autocast,
          aggregation=variable.aggregation,
          synchronization=variable.synchronization, name=variable.name)
    for name in ("regularizer", "constraint"):
      if getattr(variable, name, None) is not None:
        setattr(new, name, getattr(variable, name))
    return new


def resized_copy(layer, attributes, build):
  """A `Copier` copy of `layer` with `attributes` set (its widths) and its
  variables made anew by `build(copy)` (its own `build` at the new
  shapes). Sublayers its `build` makes anew replace the copied ones (a
  sublayer it keeps, made in `__init__`, stays)."""
  new = Copier().layer(layer)
  new._tracker.unlock()
  for name in ("_trainable_variables", "_non_trainable_variables"):
    getattr(new, name)[:] = []
  for name, value in list(vars(new).items()):
    if isinstance(value, keras.Variable):
      setattr(new, name, None)
  for name, value in attributes.items():
    setattr(new, name, value)
  new.built = False
  copied = list(new._layers)
  build(new)
  held = {id(v) for name, value in vars(new).items()
          if name not in _TRACKING
          for v in (value.values() if isinstance(value, dict) else value
                    if isinstance(value, (list, tuple)) or _is_tracked(value)
                    else [value])
          if isinstance(v, keras.layers.Layer)}
  new._layers[:] = [l for l in new._layers
                    if id(l) in held or not any(l is c for c in copied)]
  return new


# What compile, fit, evaluate and predict leave on a model, and the steps
# keras_epi's multi-worker workaround sets on it: a copy gets its own.
TRAINER = frozenset((
    "_compile_config", "_compiled_trainable_state", "optimizer",
    "stop_training", "_eval_epoch_iterator", "history", "stop_evaluating",
    "stop_predicting", "train_step", "test_step", "_maybe_symbolic_build"))


def _is_tracked(value):
  return type(value).__name__ in ("TrackedList", "TrackedSet")
