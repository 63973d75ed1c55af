"""Channel groups: which output channels of a functional Keras model are coupled.

Removing output channel ``i`` of a convolution also removes input channel ``i``
of everything that reads it, the matching slice of a BatchNormalization, the
matching channel of every tensor it is added to, and so on. This module finds
those couplings by propagating *channel labels* through the model graph, each
layer as its rule in the layer registry (`keras_epi.layers`) says:

* every output channel of a producer layer (Conv, Dense, ...) gets a fresh
  integer label;
* elementwise layers (BatchNormalization, activations, pooling, ...) pass the
  labels of their input through unchanged; several inputs (Add, Multiply,
  ...) are united channel by channel (a union-find);
* Concatenate lays the labels of its inputs side by side, Flatten tiles them;
* channels that must not change (model inputs and outputs, layers that mix
  channels such as LayerNormalization over the channel axis, layers named in
  ``ignore``) are united with a special FIXED label.

Layers that no rule covers are handled where keras_epi can be sure:

* a layer without sublayers is probed numerically: if every output channel
  depends on the same channel of its inputs only (a LayerScale, a custom
  per-channel affine map), it is elementwise, its weights are cut along the
  channel axis, and the surgeon checks the rebuilt layer on random data;
* a composite layer (a subclassed layer whose `call` runs other layers and
  keras.ops) is looked inside: its `call` is traced on symbolic inputs and the
  resulting graph is walked like a nested model, so its sublayers are pruned
  and the pruned model holds that graph in its place.

Shapes are those of the outermost call: a nested model built on
``(None, None, 3)`` and called on a fixed-size input is walked with the fixed
sizes. A :class:`ChannelGroup` is then the set of channels that share
producers: its channel ``i`` is one label class, and every member layer
carries that class at ``positions[i]`` of its output channels. Only
``channels_last`` models can be pruned.
"""

import dataclasses
import json
import weakref

from absl import logging
import keras
import numpy as np

from keras_epi import _keras_internals as internals
from keras_epi import layers as layers_lib

_FIXED = 0
_L = keras.layers


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
      group's channel ``i``, or -1 where the layer does not carry it (a
      layer after a split of the group's channels, as in CSPNet). Where a layer carries each channel ``k`` times
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


def analyze(model, ignore=(), strict=True, input_shapes=None):
  """Runs the label propagation; returns an `Analysis` (internal).

  With ``strict=False`` layers keras_epi cannot prune through are kept
  whole instead of raising (used by `count_macs`). `input_shapes` (per
  model input, without the batch axis) replaces the model's own input
  shapes, e.g. to fill in open spatial sizes (see `check_input_shapes`).
  """
  return Analysis(model, ignore, strict, input_shapes)


def check_input_shapes(model, input_shape, argument="input_shape"):
  """`input_shape` as a list of per-example shapes, one per model input,
  or None; a ValueError naming `argument` where it does not fit the model.

  `input_shape` is one shape (a model with one input) or a list of them;
  each must have the rank of its model input and agree with every size the
  model fixes, and may not leave a size open that the model leaves open.
  """
  if input_shape is None:
    return None
  _check_model(model)
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


def layer_at(model, path):
  """The layer at a member path such as ``"nested_model/conv"``.

  Inside a composite layer, a layer its `call` makes anew on every call is
  not tracked: for it (it has no weights) the result is None."""
  layer = model
  for name in path.split("/"):
    if isinstance(layer, keras.Model):
      layer = layer.get_layer(name)
    else:  # inside a composite layer
      layer = next((l for l in internals.sublayers(layer) if l.name == name),
                   None)
      if layer is None:
        return None
  return layer


def topological_nodes(model):
  """Nodes of a functional model, each after the nodes it reads from."""
  _check_model(model)
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
        inputs=keras.tree.pack_sequence_as(internals.inputs_struct(model),
                                           inputs),
        outputs=outputs, name=model.name)
  new.trainable = model.trainable
  return new


def new_input(tensor, shape=None):
  """A `keras.Input` like a model input `tensor` (same name), optionally
  with another per-example `shape`."""
  return keras.Input(
      shape=tuple(tensor.shape[1:]) if shape is None else tuple(shape),
      dtype=tensor.dtype, sparse=tensor.sparse,
      name=internals.history(tensor).operation.name)


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


@dataclasses.dataclass
class Call:
  """One call of one operation, as the analysis saw it (internal).

  Attributes:
    path: ``"nested/layer"``.
    op: The layer or keras.ops operation.
    node: Its graph node.
    rule: The `keras_epi.layers.LayerRule` that applied.
    ins, outs: Channel labels of the input and output tensors.
    in_shapes, out_shapes: Per-example shapes (of the outermost call).
  """
  path: str
  op: object
  node: object
  rule: object
  ins: list
  outs: list
  in_shapes: list
  out_shapes: list


class Analysis:
  """Label propagation over one model. Internal; see `channel_groups`.

  Attributes:
    groups: The `ChannelGroup` list.
    calls: ``{path: Call}`` (the first call of every layer).
    all_calls: Every `Call`, in topological order.
    layers: ``{path: layer}`` for every layer walked.
    expansions: ``{path: functional model}`` for composite layers looked
      inside.
  """

  def __init__(self, model, ignore, strict=True, input_shapes=None):
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
    self.calls = {}
    self.all_calls = []
    self.layers = {}
    self.expansions = {}
    self.model_inputs = {}  # id(nested model) -> input labels, first call
    self._tied = {}  # layer path -> input labels of the first call
    self.unsupported = {}  # layer path -> reason
    self._seen_paths = set()

    shapes = input_shapes or [tuple(t.shape[1:]) for t in model.inputs]
    inputs = [(self.fixed(layers_lib.width_of(s)), s) for s in shapes]
    outputs = self._walk(model, inputs, "")
    for labels, _ in outputs:
      self.fix(labels)
    unknown = sorted(n for n in self.ignore
                     if n not in self._seen_paths and
                     n not in {p.rsplit("/", 1)[-1] for p in self._seen_paths})
    if unknown:
      raise ValueError(
          f"`ignore` names layers that model '{model.name}' does not have: "
          f"{unknown}. Layer names are {sorted(self._seen_paths)[:20]}...")
    if self.unsupported and strict:
      lines = "\n".join(f"  {p}: {r}" for p, r in self.unsupported.items())
      raise ValueError(
          f"keras_epi cannot tell how these layers of model '{model.name}' "
          f"use their channels:\n{lines}\nTeach it with "
          "keras_epi.register_layer(LayerClass, channels=..., weights=...) "
          "(see its docstring), or pass their names in `ignore=` to keep "
          f"their input and output channels unpruned, e.g. "
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

  def fix(self, labels):
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size:
      self._union(labels, np.zeros(len(labels), dtype=np.int64))

  def fixed(self, n):
    labels = self._new(n)
    self.fix(labels)
    return labels

  def produce(self, path, n):
    if path not in self._fresh:
      self._fresh[path] = self.sources[path] = self._new(n)
    return self._fresh[path]

  def merge(self, ins, n, path):
    full = [labels for labels in ins if len(labels) == n]
    if n is None or not full or any(len(l) not in (1, n) for l in ins):
      raise layers_lib.Unsupported(
          f"inputs with channel counts {[len(l) for l in ins]} do not "
          f"broadcast to {n} in a way keras_epi understands ({path})")
    for labels in full[1:]:
      self._union(full[0], labels)
    return full[0]

  # -- walking --------------------------------------------------------------

  def _walk(self, model, inputs, prefix):
    """Walks a functional graph; `inputs` are (labels, shape) per input.
    Returns (labels, shape) per output."""
    tensors = {id(t): v for t, v in zip(model.inputs, inputs)}
    for node in topological_nodes(model):
      op = node.operation
      if isinstance(op, _L.InputLayer):
        continue
      ins = [tensors[id(t)] for t in node.input_tensors]
      outs = self._visit(op, node, ins, prefix)
      for t, value in zip(node.outputs, outs):
        tensors[id(t)] = value
    return [tensors[id(t)] for t in model.outputs]

  def _visit(self, op, node, ins, prefix):
    path = prefix + op.name
    self._seen_paths.add(path)
    in_labels = [l for l, _ in ins]
    in_shapes = [s for _, s in ins]
    if isinstance(op, keras.Model):
      self.layers[path] = op
      self._tie(path, in_labels)
      self.model_inputs.setdefault(id(op), in_labels)
      return self._walk(op, ins, path + "/")
    out_shapes = self._output_shapes(node, ins)
    rule = layers_lib.rule_for(type(op))
    if path in self.ignore or op.name in self.ignore:
      rule = _IGNORED
    elif rule is None and isinstance(op, _L.Layer) and \
        internals.sublayers(op):
      expansion = self._expansion(op, node, in_shapes, path)
      if expansion is not None:
        self.layers[path] = op
        self.expansions[path] = expansion
        self._tie(path, in_labels)
        self.model_inputs.setdefault(id(expansion), in_labels)
        return self._walk(expansion, ins, path + "/")
      rule = _IGNORED
    if rule is None:
      rule = _auto_rule(op, node, in_shapes, out_shapes, self.unsupported,
                        path)
    if isinstance(op, _L.Layer):
      self.layers[path] = op
    call = layers_lib.ChannelCall(self, path, in_labels, in_shapes,
                                  out_shapes, *internals.node_arguments(node))
    try:
      if rule.data_format and getattr(op, "data_format",
                                      "channels_last") != "channels_last":
        raise layers_lib.Unsupported(
            "data_format='channels_first' cannot be pruned (count_macs "
            "counts it; channels_last models prune)")
      if _has_channel_state(op):
        self._tie(path, in_labels)
      out_labels = layers_lib.flow_of(rule)(op, call)
    except layers_lib.Unsupported as e:
      self.unsupported[path] = f"{type(op).__name__}: {e}"
      rule = layers_lib.LayerRule(layers_lib.FIXED, macs=rule.macs)
      out_labels = layers_lib.flow_of(rule)(op, call)
    out_labels = [np.asarray(l, dtype=np.int64) for l in out_labels]
    if len(out_labels) != len(node.outputs):
      raise AssertionError(f"{path}: {len(out_labels)} labels for "
                           f"{len(node.outputs)} outputs")
    record = Call(path, op, node, rule, in_labels, out_labels, in_shapes,
                  out_shapes)
    self.calls.setdefault(path, record)
    self.all_calls.append(record)
    return list(zip(out_labels, out_shapes))

  def _output_shapes(self, node, ins):
    """Per-example output shapes for these input shapes (the outer call's)."""
    recorded = [tuple(t.shape[1:]) for t in node.outputs]
    if all(tuple(t.shape[1:]) == shape
           for t, (_, shape) in zip(node.input_tensors, ins)):
      return recorded
    specs = {id(t): keras.KerasTensor((None, *shape), dtype=t.dtype)
             for t, (_, shape) in zip(node.input_tensors, ins)}
    args, kwargs = internals.fill_in(node, specs)
    try:
      out = node.operation.compute_output_spec(*args, **kwargs)
    except Exception:  # pylint: disable=broad-except
      return recorded  # keep the graph's own (possibly open) shapes
    return [tuple(t.shape[1:]) for t in keras.tree.flatten(out)]

  def _expansion(self, op, node, in_shapes, path):
    """A functional model of a composite layer's `call`, or None."""
    try:
      return expand(op, node, in_shapes)
    except Exception as e:  # pylint: disable=broad-except
      self.unsupported[path] = (
          f"{type(op).__name__}: a composite layer whose `call` could not be "
          f"traced on symbolic inputs ({type(e).__name__}: {e})")
      return None

  def _tie(self, path, ins):
    """A layer called more than once has one set of weights: unite inputs."""
    first = self._tied.setdefault(path, ins)
    if first is not ins:
      for a, b in zip(first, ins):
        if len(a) != len(b):
          raise layers_lib.Unsupported(
              "called on inputs with different channel counts")
        self._union(a, b)

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
    # Groups whose channels pass through a sum-like merge (layer or op).
    residual_groups = set()
    for call in self.all_calls:
      if isinstance(call.op, layers_lib.residual_merges()) and call.outs:
        for r in self.find(call.outs[0]):
          if r in component:
            residual_groups.add(component[r])
    groups, classes = [], {}
    for name, members in self._all_members(by_group).items():
      if members is None:
        continue
      residual = name in residual_groups
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
    for path, call in self.calls.items():
      outs = call.outs
      if len(outs) != 1 or not isinstance(call.op, _L.Layer):
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
        carried = counts > 0
        repeats = counts[carried].max()
        if (counts[carried] != repeats).any():
          logging.warning(
              "keras_epi: channel group '%s' reaches layer '%s' unevenly "
              "(some channels more often than others); the group is kept "
              "unpruned.", name, path)
          members[name] = None
          continue
        # A layer past a split carries part of the group: -1 elsewhere.
        positions = np.full((size, repeats), -1, dtype=np.int64)
        positions[carried] = pos[np.argsort(channel, kind="stable")].reshape(
            -1, repeats)
        members[name].append(
            (path, positions[:, 0] if repeats == 1 else positions))
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




_IGNORED = layers_lib.LayerRule(layers_lib.FIXED)
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
  """
  args, kwargs = internals.node_arguments(node)
  if len(internals.inbound_nodes(layer)) > 1:
    # One graph serves every call of a shared layer: open spatial sizes.
    in_shapes = [(*[None] * (len(s) - 1), s[-1]) if s else s
                 for s in in_shapes]
  key = tuple(tuple(s) for s in in_shapes)
  cache = _EXPANSIONS.setdefault(layer, {})
  if key in cache:
    return cache[key]
  tensors = [t for t in keras.tree.flatten((args, kwargs))
             if isinstance(t, keras.KerasTensor)]
  inputs = {id(t): keras.Input(shape=shape, dtype=t.dtype,
                               name=f"{layer.name}_input_{i}")
            for i, (t, shape) in enumerate(zip(tensors, in_shapes))}
  new_args, new_kwargs = internals.fill_in(node, inputs)
  new_kwargs = {k: v for k, v in new_kwargs.items() if k != "training"}
  sublayers = _all_sublayers(layer)
  nodes = {}
  try:
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
  cache[key] = model
  return model


def _all_sublayers(layer):
  found, stack = {}, list(internals.sublayers(layer))
  while stack:
    sub = stack.pop()
    if id(sub) not in found:
      found[id(sub)] = sub
      stack.extend(internals.sublayers(sub))
  return list(found.values())


def _auto_rule(op, node, in_shapes, out_shapes, unsupported, path):
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
    else:
      elementwise = probe_elementwise(op, node, in_shapes, out_shapes)
      if key is not None:
        _PROBED[key] = elementwise
  except Exception as e:  # pylint: disable=broad-except
    unsupported[path] = (
        f"{type(op).__name__}: unknown layer type, and calling it on random "
        f"data to find out failed ({type(e).__name__}: {e})")
    return _IGNORED
  if not elementwise:
    logging.log_first_n(
        logging.WARNING,
        "keras_epi: layer '%s' (%s) mixes its channels; its input and output "
        "channels are kept whole. If it creates new channels like a "
        "convolution, register it: keras_epi.register_layer(%s, "
        "channels='produce', weights=..., width=...).", 20, path,
        type(op).__name__, type(op).__name__)
    return _IGNORED
  if not isinstance(op, _L.Layer):  # a keras.ops operation: stateless
    return layers_lib.LayerRule(layers_lib.elementwise_op_flow)
  channels = out_shapes[0][-1]
  weights = {}
  for weight in op.weights:
    shape = tuple(weight.shape)
    if shape and shape[-1] == channels and channels > 1:
      if channels in shape[:-1]:
        unsupported[path] = _ambiguous(op, weight)
        return _IGNORED
      weights[weight.name] = ((-1, "out"),)
    elif channels in shape and channels > 1:
      unsupported[path] = _ambiguous(op, weight)
      return _IGNORED
  return layers_lib.LayerRule(layers_lib.ELEMENTWISE, weights, auto=True)


_PROBED = {}  # (class, config, shapes) -> elementwise; weights do not enter:
# the surgeon checks every probed layer again with its own weights.


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


def _has_channel_state(op):
  """Whether a layer's weights or config depend on its input channels."""
  return bool(getattr(op, "weights", ())) or isinstance(op, _L.Reshape)
