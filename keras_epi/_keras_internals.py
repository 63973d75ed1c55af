"""The only module of keras_epi that touches Keras' private structures.

Keras 3 has no public API for walking a functional graph node by node, for a
layer's sublayers or for a compiled model's compile arguments; these helpers
are where keras_epi reads them. Each names the attribute it reads, so a Keras
upgrade that moves one breaks here and nowhere else.
"""

import json
import os

def history(tensor):
  """``(operation, node_index, tensor_index)`` that made a KerasTensor."""
  return tensor._keras_history  # pylint: disable=protected-access


def producing_node(tensor):
  """The graph node whose output `tensor` is."""
  op, node_index, _ = history(tensor)
  return op._inbound_nodes[node_index]  # pylint: disable=protected-access


def inbound_nodes(op):
  """The nodes at which an operation was called on symbolic tensors."""
  return op._inbound_nodes  # pylint: disable=protected-access


def fill_in(node, tensors):
  """``(args, kwargs)`` of a node's call with its tensors replaced from
  ``{id(old tensor): new value}``."""
  return node.arguments.fill_in(tensors)


def node_arguments(node):
  """``(args, kwargs)`` of a node's call, as recorded."""
  return node.arguments.args, node.arguments.kwargs


def inputs_struct(model):
  return model._inputs_struct  # pylint: disable=protected-access


def outputs_struct(model):
  return model._outputs_struct  # pylint: disable=protected-access


def compile_config(model):
  """The keyword arguments `model.compile` was called with."""
  return dict(model._compile_config.config)  # pylint: disable=protected-access


def optimizer_variables_to_train(optimizer):
  """The variables an optimizer was built for (`apply`'s default)."""
  return optimizer._trainable_variables  # pylint: disable=protected-access


def sublayers(layer):
  """The layers a (subclassed) layer tracks as attributes, not nested."""
  return list(getattr(layer, "_layers", ()))


def override_symbolic_build(model, build):
  """Replaces `model._maybe_symbolic_build` (the multi-worker fix)."""
  original = model._maybe_symbolic_build  # pylint: disable=protected-access
  model._maybe_symbolic_build = build(original)  # pylint: disable=protected-access


def lambda_config(layer):
  """The pieces of a Lambda layer that `from_config` cannot rebuild safely."""
  return dict(function=layer.function, output_shape=layer._output_shape,  # pylint: disable=protected-access
              mask=layer.mask, arguments=layer.arguments)


def remove_nodes(op, node_ids):
  """Takes the nodes whose ids are in `node_ids` off `op`'s node lists."""
  for name in ("_inbound_nodes", "_outbound_nodes"):
    nodes = getattr(op, name, None)
    if nodes:
      nodes[:] = [n for n in nodes if id(n) not in node_ids]


def stateless_copy(layer):
  """A shallow copy of a layer without weights, with no graph nodes of its
  own (for stateless layers whose config cannot be serialised)."""
  # copy.copy would go through Keras' __reduce__, i.e. get_config.
  new = object.__new__(type(layer))
  new.__dict__.update(layer.__dict__)
  new.__dict__["_inbound_nodes"] = []
  new.__dict__["_outbound_nodes"] = []
  return new


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
