"""Channel groups: which output channels of a functional Keras model are coupled.

Removing output channel ``i`` of a convolution also removes input channel ``i``
of everything that reads it, the matching slice of a BatchNormalization, the
matching channel of every tensor it is added to, and so on. This module finds
those couplings by propagating *channel labels* through the model graph:

* every output channel of a producer layer (Conv, Dense, ...) gets a fresh
  integer label;
* per-channel layers (BatchNormalization, activations, pooling, ...) pass the
  labels of their input through unchanged;
* element-wise merges (Add, Multiply, ...) unite the labels of their inputs
  channel by channel (a union-find);
* Concatenate lays the labels of its inputs side by side, Flatten tiles them;
* channels that must not change (model inputs and outputs, layers that mix
  channels such as LayerNormalization over the channel axis, layers named in
  ``ignore``) are united with a special FIXED label.

A :class:`ChannelGroup` is then the set of channels that share producers: its
channel ``i`` is one label class, and every member layer carries that class at
``positions[i]`` of its output channels. This is the only module that reads
Keras' graph internals (``_keras_history``, ``_inbound_nodes``, ``arguments``).
Only ``channels_last`` models are supported.
"""

import dataclasses
import functools
import math

from absl import logging
import keras
import numpy as np

_FIXED = 0
_L = keras.layers

_CONV = (_L.Conv1D, _L.Conv2D, _L.Conv3D)
_CONV_TRANSPOSE = (_L.Conv1DTranspose, _L.Conv2DTranspose, _L.Conv3DTranspose)
_DEPTHWISE = (_L.DepthwiseConv1D, _L.DepthwiseConv2D)
_SEPARABLE = (_L.SeparableConv1D, _L.SeparableConv2D)
_MERGE = (_L.Add, _L.Subtract, _L.Multiply, _L.Average, _L.Maximum, _L.Minimum)
_RESIDUAL_MERGE = tuple(m for m in _MERGE if m is not _L.Multiply)
# Layers that act on each channel independently and have no per-channel state
# other than the ones handled by the surgeon (PReLU's alpha).
_PER_CHANNEL = (
    _L.Activation, _L.ReLU, _L.LeakyReLU, _L.ELU, _L.PReLU, _L.Dropout,
    _L.SpatialDropout1D, _L.SpatialDropout2D, _L.SpatialDropout3D,
    _L.GaussianNoise, _L.GaussianDropout, _L.AlphaDropout,
    _L.ActivityRegularization, _L.Identity, _L.Masking,
    _L.MaxPooling1D, _L.MaxPooling2D, _L.MaxPooling3D,
    _L.AveragePooling1D, _L.AveragePooling2D, _L.AveragePooling3D,
    _L.GlobalAveragePooling1D, _L.GlobalAveragePooling2D,
    _L.GlobalAveragePooling3D, _L.GlobalMaxPooling1D, _L.GlobalMaxPooling2D,
    _L.GlobalMaxPooling3D, _L.ZeroPadding1D, _L.ZeroPadding2D,
    _L.ZeroPadding3D, _L.Cropping1D, _L.Cropping2D, _L.Cropping3D,
    _L.UpSampling1D, _L.UpSampling2D, _L.UpSampling3D, _L.RepeatVector,
)
# Activations that normalise across the channel axis.
_MIXING_ACTIVATIONS = ("softmax", "log_softmax")


@dataclasses.dataclass(frozen=True, eq=False)
class ChannelGroup:
  """Channels that must be removed together.

  Attributes:
    name: Stable name of the group: the name of its first producer layer in
      topological order (e.g. ``"conv2_block1_1_conv"``). Layers inside a
      nested model are written ``"nested_model/layer"``.
    size: Number of channels in the group.
    members: ``(layer_name, positions)`` for every layer whose output channel
      axis carries the group's channels, in topological order.
      ``positions[i]`` is the index, among that layer's output channels, of the
      group's channel ``i``. Where a layer carries each channel ``k`` times
      (DepthwiseConv with ``depth_multiplier=k``, Flatten of a ``HxW`` map),
      ``positions`` has shape ``(size, k)``.
    residual: True when the channels pass through an element-wise sum-like
      merge (Add, Subtract, Average, Maximum, Minimum): a residual stream,
      whose activations every block of its stage carries. (A Multiply, as in
      squeeze-excite gates, does not count.)
  """
  name: str
  size: int
  members: tuple
  residual: bool = False

  def member_names(self):
    """Names of the member layers, in topological order."""
    return [name for name, _ in self.members]

  def __repr__(self):
    return (f"ChannelGroup(name={self.name!r}, size={self.size}, "
            f"members={self.member_names()!r}"
            f"{', residual=True' if self.residual else ''})")


def channel_groups(model, *, ignore=()):
  """Finds the groups of coupled output channels of a functional Keras model.

  Args:
    model: A built functional or Sequential `keras.Model`, channels_last.
      Nested models are followed.
    ignore: Names of layers whose input and output channels must stay as they
      are (their channels join no group). Use it for layers this module does
      not understand; a nested layer may be named ``"nested_model/layer"``.

  Returns:
    A list of :class:`ChannelGroup`, ordered by their first producer.

  Raises:
    ValueError: if the model is not a built Keras model, if `ignore` names a
      layer the model does not have, or if the model contains layers whose
      channel semantics are unknown (the message lists them, ready to pass as
      `ignore`).

  Example:
  >>> model = keras.applications.ResNet50(weights=None)
  >>> groups = keras_epi.channel_groups(model)
  >>> groups[0].name, groups[0].size
  ('conv1_conv', 64)
  """
  return analyze(model, ignore).groups


def analyze(model, ignore=()):
  """Runs the label propagation; returns a `_Analysis` (internal)."""
  return _Analysis(model, ignore)


def walk_calls(model, prefix=""):
  """Yields ``(path, operation, node)`` for every call in the model, nested
  models expanded (their own call is not yielded). Internal."""
  for node in topological_nodes(model):
    op = node.operation
    if isinstance(op, _L.InputLayer):
      continue
    if isinstance(op, keras.Model):
      yield from walk_calls(op, prefix + op.name + "/")
    else:
      yield prefix + op.name, op, node


def layer_at(model, path):
  """The layer at a member path such as ``"nested_model/conv"``."""
  layer = model
  for name in path.split("/"):
    layer = layer.get_layer(name)
  return layer


def topological_nodes(model):
  """Nodes of a functional model, each after the nodes it reads from."""
  _check_model(model)
  order, seen = [], set()
  stack = [(t, False) for t in reversed(model.outputs)]
  while stack:
    tensor_or_node, expanded = stack.pop()
    if expanded:
      order.append(tensor_or_node)
      continue
    op, node_index, _ = tensor_or_node._keras_history
    node = op._inbound_nodes[node_index]
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
    args, kwargs = node.arguments.fill_in(tensors)
    outputs = keras.tree.flatten(operation_for(node.operation)(*args,
                                                               **kwargs))
    for old, new in zip(node.outputs, outputs):
      tensors[id(old)] = new
  return keras.tree.map_structure(lambda t: tensors[id(t)],
                                  model._outputs_struct)  # pylint: disable=protected-access


def rebuild(model, inputs, operation_for, call_for=None):
  """A new model with `model`'s graph on new `inputs`.

  Args:
    model: A functional or Sequential model.
    inputs: New `keras.Input` tensors, one per `model.inputs`.
    operation_for: Maps an operation of `model` to its replacement.
    call_for: What to call in place of an operation of a functional graph
      (default `operation_for`); a Sequential model takes the layers of
      `operation_for`.

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
    new = keras.Model(
        inputs=keras.tree.pack_sequence_as(model._inputs_struct, inputs),  # pylint: disable=protected-access
        outputs=outputs, name=model.name)
  new.trainable = model.trainable
  return new


def new_input(tensor, shape=None):
  """A `keras.Input` like a model input `tensor` (same name), optionally
  with another per-example `shape`."""
  return keras.Input(
      shape=tuple(tensor.shape[1:]) if shape is None else tuple(shape),
      dtype=tensor.dtype, sparse=tensor.sparse,
      name=tensor._keras_history.operation.name)  # pylint: disable=protected-access


def _check_model(model):
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


@functools.cache
def _elementwise_op_classes():
  """Classes of keras.ops element-wise operations, found through public API.

  Functional models store ``x + 1`` or ``keras.ops.relu(x)`` as bare
  operations; we recognise them with isinstance on classes obtained by tracing
  the public functions once.
  """
  x = keras.KerasTensor((None, 4))
  unary = ["relu", "relu6", "sigmoid", "hard_sigmoid", "silu", "hard_silu",
           "gelu", "tanh", "abs", "square", "sqrt", "exp", "negative", "elu",
           "selu", "leaky_relu", "softplus", "softsign", "log_sigmoid", "sign",
           "mish", "erf"]
  binary = ["add", "subtract", "multiply", "divide", "true_divide", "maximum",
            "minimum", "power"]
  classes = set()
  for name in unary + binary:
    fn = getattr(keras.ops, name, None)
    if fn is not None:  # some exist only in newer Keras versions
      args = (x,) if name in unary else (x, x)
      classes.add(type(fn(*args)._keras_history.operation))
  # A dtype cast keeps channels too.
  classes.add(type(keras.ops.cast(x, "float16")._keras_history.operation))
  return tuple(classes)


class _Analysis:
  """Label propagation over one model. Internal; see `channel_groups`."""

  def __init__(self, model, ignore):
    _check_model(model)
    if isinstance(ignore, str):
      raise ValueError(
          f"`ignore` must be a collection of layer names, received the string "
          f"{ignore!r}; write ignore=[{ignore!r}].")
    self.model = model
    self.ignore = set(ignore)
    self._parent = np.arange(1024, dtype=np.int64)  # union-find
    self._size = 1  # label 0 is FIXED
    self._fresh = {}  # producer path -> labels
    self.sources = {}  # producer path -> labels (walk order)
    self.calls = {}  # layer path -> (op, input labels, output labels), 1st call
    self.all_calls = []  # (path, op, node, input labels, output labels)
    self.model_inputs = {}  # id(nested model) -> input labels, first call
    self._tied = {}  # layer path -> input labels of the first call
    self.unsupported = {}  # layer path -> reason
    self._seen_paths = set()

    inputs = [self._fixed(_channels(t, model)) for t in model.inputs]
    outputs = self._walk(model, inputs, "")
    for labels in outputs:
      self._fix(labels)
    unknown = sorted(n for n in self.ignore
                     if n not in self._seen_paths and
                     n not in {p.rsplit("/", 1)[-1] for p in self._seen_paths})
    if unknown:
      raise ValueError(
          f"`ignore` names layers that model '{model.name}' does not have: "
          f"{unknown}. Layer names are {sorted(self._seen_paths)[:20]}...")
    if self.unsupported:
      lines = "\n".join(f"  {p}: {r}" for p, r in self.unsupported.items())
      raise ValueError(
          f"keras_epi cannot tell how these layers of model '{model.name}' "
          f"use their channels:\n{lines}\nPass their names in `ignore=` to "
          f"keep their input and output channels unpruned, e.g. "
          f"ignore={sorted(self.unsupported)!r}.")
    self.groups, self.classes = self._make_groups()

  # -- union-find (vectorised over channels) -------------------------------

  def _new(self, n):
    start = self._size
    if start + n > len(self._parent):
      grown = np.arange(max(2 * len(self._parent), start + n), dtype=np.int64)
      grown[:start] = self._parent[:start]
      self._parent = grown
    self._size += n
    return np.arange(start, start + n, dtype=np.int64)

  def find(self, labels):
    """Root label of each label."""
    parent = self._parent
    roots = parent[np.asarray(labels, dtype=np.int64)]
    while True:
      up = parent[roots]
      if np.array_equal(up, roots):
        return roots
      roots = parent[up]

  def _union(self, a, b):
    # Each pass links every differing pair's larger root under its smaller
    # one (so FIXED, label 0, stays a root); pairs that lost a write race to
    # a shared root are linked on the next pass.
    while True:
      ra, rb = self.find(a), self.find(b)
      differ = ra != rb
      if not differ.any():
        return
      lo, hi = np.minimum(ra, rb)[differ], np.maximum(ra, rb)[differ]
      self._parent[hi] = lo
      self._parent[:self._size] = self.find(np.arange(self._size))

  def _fix(self, labels):
    self._union(labels, np.zeros(len(labels), dtype=np.int64))

  def _fixed(self, n):
    labels = self._new(n)
    self._fix(labels)
    return labels

  def fixed_mask(self, labels):
    return self.find(labels) == _FIXED

  # -- walking --------------------------------------------------------------

  def _walk(self, model, input_labels, prefix):
    tensors = {id(t): l for t, l in zip(model.inputs, input_labels)}
    for node in topological_nodes(model):
      op = node.operation
      if isinstance(op, _L.InputLayer):
        continue
      ins = [tensors[id(t)] for t in node.input_tensors]
      outs = self._visit(op, node, ins, prefix)
      for t, labels in zip(node.outputs, outs):
        tensors[id(t)] = labels
    return [tensors[id(t)] for t in model.outputs]

  def _visit(self, op, node, ins, prefix):
    path = prefix + op.name
    self._seen_paths.add(path)
    if path in self.ignore or op.name in self.ignore:
      for labels in ins:
        self._fix(labels)
      outs = [self._fixed(_channels(t, op)) for t in node.outputs]
    elif isinstance(op, keras.Model):
      self._tie(path, ins)
      self.model_inputs.setdefault(id(op), ins)
      outs = self._walk(op, ins, path + "/")
    else:
      if _has_channel_state(op):
        self._tie(path, ins)
      try:
        outs = self._rule(op, node, ins, path)
      except _Unsupported as e:
        self.unsupported[path] = f"{type(op).__name__}: {e}"
        outs = [self._fixed(_channels(t, op)) for t in node.outputs]
    if len(outs) != len(node.outputs):
      raise AssertionError(f"{path}: {len(outs)} labels for "
                           f"{len(node.outputs)} outputs")
    if isinstance(op, _L.Layer) and not isinstance(op, keras.Model):
      self.calls.setdefault(path, (op, ins, outs))
      self.all_calls.append((path, op, node, ins, outs))
    return outs

  def _tie(self, path, ins):
    """A layer called more than once has one set of weights: unite inputs."""
    first = self._tied.setdefault(path, ins)
    if first is not ins:
      for a, b in zip(first, ins):
        if len(a) != len(b):
          raise _Unsupported("called on inputs with different channel counts")
        self._union(a, b)

  def _producer(self, path, n):
    if path not in self._fresh:
      self._fresh[path] = self.sources[path] = self._new(n)
    return self._fresh[path]

  def _rule(self, op, node, ins, path):  # pylint: disable=too-many-return-statements,too-many-branches
    out_shape = node.outputs[0].shape
    if isinstance(op, (*_CONV, *_CONV_TRANSPOSE, *_DEPTHWISE, *_SEPARABLE,
                       *_PER_CHANNEL, _L.Flatten, _L.BatchNormalization)):
      _check_channels_last(op)
    x = ins[0] if ins else None

    if isinstance(op, _CONV):
      groups = getattr(op, "groups", 1)
      if groups == 1:
        out = self._producer(path, op.filters)
      elif groups == len(x):  # depthwise-like: out channel j reads input j//m
        out = np.repeat(x, op.filters // groups)
      else:  # general grouped conv: each group must keep equal widths
        self._fix(x)
        out = self._producer(path, op.filters)
        self._fix(out)
      return [self._mixing_activation(op, out)]
    if isinstance(op, (*_CONV_TRANSPOSE, *_SEPARABLE, _L.Dense)):
      out = self._producer(path, _last(out_shape))
      return [self._mixing_activation(op, out)]
    if isinstance(op, _DEPTHWISE):
      return [self._mixing_activation(op, np.repeat(x, op.depth_multiplier))]
    if isinstance(op, _L.BatchNormalization):
      if _normalised_axes(op.axis, len(out_shape)) != [len(out_shape) - 1]:
        self._fix(x)
      return [x]
    if isinstance(op, (_L.LayerNormalization, _L.UnitNormalization)):
      if len(out_shape) - 1 in _normalised_axes(op.axis, len(out_shape)):
        self._fix(x)  # statistics over the channels: removal changes them
      return [x]
    if isinstance(op, (_L.GroupNormalization, _L.Normalization)):
      self._fix(x)
      return [x]
    if isinstance(op, _L.Softmax):
      if len(out_shape) - 1 in _normalised_axes(op.axis, len(out_shape)):
        self._fix(x)
      return [x]
    if isinstance(op, _L.Rescaling):
      if np.ndim(op.scale) or np.ndim(op.offset):
        self._fix(x)
      return [x]
    if isinstance(op, _L.Activation):
      return [self._mixing_activation(op, x)]
    if isinstance(op, _PER_CHANNEL):
      return [x]
    if isinstance(op, _L.Flatten):
      return [np.tile(x, _spatial_size(node.input_tensors[0].shape))]
    if isinstance(op, _L.Reshape):
      in_shape = node.input_tensors[0].shape
      if _last(out_shape) == _last(in_shape):  # row-major: channel preserved
        return [x]
      if _last(out_shape) == math.prod(in_shape[1:]) and \
          math.prod(out_shape[1:-1]) == 1:  # flattening
        return [np.tile(x, _spatial_size(in_shape))]
      self._fix(x)
      return [self._fixed(_last(out_shape))]
    if isinstance(op, _L.Permute):
      if tuple(op.dims)[-1] == len(op.dims):
        return [x]
      self._fix(x)
      return [self._fixed(_last(out_shape))]
    if isinstance(op, _L.Concatenate):
      axis = op.axis % len(out_shape)
      if axis == len(out_shape) - 1:
        return [np.concatenate(ins)]
      return [self._merge(ins, out_shape, path)]
    if isinstance(op, _MERGE):
      return [self._merge(ins, out_shape, path)]
    if isinstance(op, _elementwise_op_classes()):
      constants = [a for a in keras.tree.flatten(node.arguments.args)
                   if not isinstance(a, keras.KerasTensor)]
      if any(np.ndim(c) and np.size(c) > 1 for c in constants):
        for labels in ins:
          self._fix(labels)
      return [self._merge(ins, out_shape, path)]
    raise _Unsupported(
        "unknown layer type (channel mixing or per-channel state unknown)")

  def _merge(self, ins, out_shape, path):
    n = _last(out_shape)
    full = [labels for labels in ins if len(labels) == n]
    if not full or any(len(l) not in (1, n) for l in ins):
      raise _Unsupported(
          f"inputs with channel counts {[len(l) for l in ins]} do not "
          f"broadcast to {n} in a way keras_epi understands ({path})")
    for labels in full[1:]:
      self._union(full[0], labels)
    return full[0]

  def _mixing_activation(self, op, labels):
    activation = getattr(op, "activation", None)
    name = getattr(activation, "__name__", activation)
    if name in _MIXING_ACTIVATIONS:
      self._fix(labels)
    return labels

  # -- groups ---------------------------------------------------------------

  def _make_groups(self):
    """Groups = classes linked by sharing a producer; see module docstring."""
    class_order = []  # classes in order of first appearance in a source
    component = {}  # class -> component id (first source's path)
    for path, labels in self.sources.items():
      roots = [r for r in dict.fromkeys(self.find(labels)) if r != _FIXED]
      linked = {component[r] for r in roots if r in component} | {path}
      name = next(p for p in self.sources if p in linked)  # earliest source
      for r in roots:
        if r not in component:
          class_order.append(r)
      for r, c in list(component.items()):
        if c in linked:
          component[r] = name
      for r in roots:
        component[r] = name
    by_group = {}
    for r in class_order:
      by_group.setdefault(component[r], []).append(r)

    by_group = {name: np.asarray(c, dtype=np.int64)
                for name, c in by_group.items()}
    groups, classes = [], {}
    for name, members in self._all_members(by_group).items():
      if members is None:
        continue
      residual = any(isinstance(self.calls[path][0], _RESIDUAL_MERGE)
                     for path, _ in members)
      groups.append(ChannelGroup(name=name, size=len(by_group[name]),
                                 members=members, residual=residual))
      classes[name] = by_group[name]
    return groups, classes

  def _all_members(self, group_classes):
    """``{group name: members, or None}`` for ``{name: class labels}``, in
    one pass over the calls (None: the group reaches a layer in part)."""
    names = list(group_classes)
    group_of = np.full(self._size, -1, dtype=np.int64)  # root -> group
    channel_of = np.zeros(self._size, dtype=np.int64)  # root -> channel
    for index, name in enumerate(names):
      group_of[group_classes[name]] = index
      channel_of[group_classes[name]] = np.arange(len(group_classes[name]))
    members = {name: [] for name in names}
    for path, (_, _, outs) in self.calls.items():
      if len(outs) != 1:
        continue
      roots = self.find(outs[0])
      owners = group_of[roots]
      for index in np.unique(owners[owners >= 0]):
        name = names[index]
        if members[name] is None:
          continue
        pos = np.nonzero(owners == index)[0]
        channel = channel_of[roots[pos]]
        size = len(group_classes[name])
        counts = np.bincount(channel, minlength=size)
        if counts.min() != counts.max():
          logging.warning(
              "keras_epi: channel group '%s' reaches layer '%s' only in part "
              "(through a concatenation feeding a merge); the group is kept "
              "unpruned.", name, path)
          members[name] = None
          continue
        positions = pos[np.argsort(channel, kind="stable")].reshape(
            size, counts[0])
        members[name].append(
            (path, positions[:, 0] if counts[0] == 1 else positions))
    return {name: None if m is None else tuple(m)
            for name, m in members.items()}

  def removed_labels(self, keep):
    """Which root labels to remove for a `keep` mapping, as a boolean array
    indexed by label; validates `keep`."""
    if not hasattr(keep, "items"):
      raise ValueError(
          "`keep` must map group names to the channel indices to keep, "
          f"received {type(keep).__name__}.")
    removed = []
    for name, indices in keep.items():
      if name not in self.classes:
        known = list(self.classes)
        raise ValueError(
            f"`keep` names group {name!r}, which model '{self.model.name}' "
            f"does not have. Its groups are {known[:10]}"
            f"{'...' if len(known) > 10 else ''} (see keras_epi.channel_groups"
            "; pass the same `ignore` to both).")
      classes = self.classes[name]
      if isinstance(indices, (set, frozenset)):
        indices = sorted(indices)
      idx = np.asarray(list(indices) if isinstance(indices, range)
                       else indices)
      if idx.ndim != 1 or (idx.size and not np.issubdtype(idx.dtype,
                                                           np.integer)):
        raise ValueError(
            f"`keep[{name!r}]` must be a 1-D sequence of integer channel "
            f"indices, received {indices!r}.")
      if idx.size == 0:
        raise ValueError(
            f"`keep[{name!r}]` is empty: a group must keep at least one "
            "channel. Leave the group out of `keep` to keep it whole.")
      if idx.min() < 0 or idx.max() >= len(classes):
        raise ValueError(
            f"`keep[{name!r}]` has indices outside [0, {len(classes)}): "
            f"{idx[(idx < 0) | (idx >= len(classes))].tolist()}.")
      if len(np.unique(idx)) != idx.size:
        raise ValueError(f"`keep[{name!r}]` has repeated indices.")
      removed.append(np.delete(classes, idx))
    flags = np.zeros(self._size, dtype=bool)
    for labels in removed:
      flags[labels] = True
    return flags

  def keep_mask(self, labels, removed):
    """Boolean mask of the channels of a tensor that survive.

    `removed` is the array from `removed_labels`."""
    return ~removed[self.find(labels)]


class _Unsupported(Exception):
  pass


def _check_channels_last(op):
  if getattr(op, "data_format", "channels_last") != "channels_last":
    raise _Unsupported("data_format='channels_first' is not supported")


def _normalised_axes(axis, ndim):
  axes = axis if isinstance(axis, (list, tuple)) else [axis]
  return sorted(a % ndim for a in axes)


def _last(shape):
  if shape[-1] is None:
    raise _Unsupported(f"unknown channel count in shape {shape}")
  return shape[-1]


def _spatial_size(shape):
  if any(d is None for d in shape[1:]):
    raise _Unsupported(f"flattening a tensor of unknown shape {shape}")
  return math.prod(shape[1:-1])


def _channels(tensor, op):
  if len(tensor.shape) < 2 or tensor.shape[-1] is None:
    # Scalars per example or unknown widths: a single fixed pseudo-channel.
    return 1
  del op
  return tensor.shape[-1]


def _has_channel_state(op):
  """Whether a layer's weights or config depend on its input channels."""
  return bool(getattr(op, "weights", ())) or isinstance(op, _L.Reshape)
