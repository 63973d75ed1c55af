"""Channel groups: which output channels of a Keras model are coupled.

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

A layer no rule covers is probed on data (`keras_epi._probe`), or walked
through its traced `call` if it is composite (`_functional.expand`).

Shapes are those of the outermost call: a nested model built on
``(None, None, 3)`` and called on a fixed-size input is walked with the fixed
sizes. A :class:`ChannelGroup` is then the set of channels that share
producers: its channel ``i`` is one label class, and every member layer
carries that class at ``positions[i]`` of its output channels. Only
``channels_last`` models can be pruned.
"""

import dataclasses

from absl import logging
import keras
import numpy as np

from keras_epi import _functional as functional
from keras_epi import _groups
from keras_epi import _keras_internals as internals
from keras_epi import _probe
from keras_epi import layers as layers_lib

FIXED = 0  # the label of channels that must stay (model inputs, outputs, ...)
_L = keras.layers


ChannelGroup = _groups.ChannelGroup


def channel_groups(model, *, ignore=(), through_norms=False):
  """Finds the groups of coupled output channels of a functional Keras model.

  Args:
    model: A built functional or Sequential `keras.Model`, channels_last.
      Nested models are followed.
    ignore: Names of layers whose input and output channels must stay as they
      are (their channels join no group). Use it for layers this module does
      not understand; a nested layer may be named ``"nested_model/layer"``.
    through_norms: Let groups pass through LayerNormalization and
      RMSNormalization over the channels (a transformer's model width, the
      stream of a ConvNeXt stage). Approximate: a pruned norm takes its
      statistics over the kept channels, so the pruned model is not the
      dense one with those channels zeroed; training on after the cut
      (EPI) recovers. False (the default): such norms keep their channels
      whole and every cut is exact.

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
  return analyze(model, ignore, through_norms=through_norms).groups


layer_at = functional.layer_at
member_side = functional.member_side


def analyze(model, ignore=(), strict=True, input_shapes=None,
            through_norms=False):
  """Runs the label propagation; returns an `Analysis` (internal).

  With ``strict=False`` layers keras_epi cannot prune through are kept
  whole instead of raising (used by `count_macs`). `input_shapes` (per
  model input, without the batch axis) replaces the model's own input
  shapes, e.g. to fill in open spatial sizes (see
  `_functional.check_input_shapes`). `through_norms`: see `channel_groups`.
  """
  return Analysis(model, ignore, strict, input_shapes, through_norms)


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
    sides: Labels of the further sides its flow named (`ChannelCall.side`).
    inner: The sides that are the layer's own channels (an attention
      layer's heads): groups with the member ``"path:side"``.
    filled: It is inside a composite layer traced with open sizes filled
      (`_functional.expand`): its shapes are not the model's, so its MACs
      are unknown.
  """
  path: str
  op: object
  node: object
  rule: object
  ins: list
  outs: list
  in_shapes: list
  out_shapes: list
  sides: dict = dataclasses.field(default_factory=dict)
  inner: tuple = ()
  filled: bool = False


class Analysis:
  """Label propagation over one model. Internal; see `channel_groups`.

  Attributes:
    groups: The `ChannelGroup` list.
    calls: ``{path: Call}`` (the first call of every layer).
    all_calls: Every `Call`, in topological order.
    layers: ``{path: layer}`` for every layer walked.
    expansions: ``{path: functional model}`` for composite layers looked
      inside.
    filled: Paths of the expansions traced at a fixed batch size or filled
      sizes (rebuilt as copies, `_functional.expand`).
  """

  def __init__(self, model, ignore, strict=True, input_shapes=None,
               through_norms=False):
    functional.check_model(model)
    if not isinstance(through_norms, bool):
      raise ValueError(f"`through_norms` must be True or False, received "
                       f"{through_norms!r}.")
    self.through_norms = through_norms
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
    self.filled = set()
    self._open_inside = set()  # filled at sizes the model leaves open
    self.model_inputs = {}  # id(nested model) -> input labels, first call
    self._tied = {}  # layer path -> input labels of the first call
    self.unsupported = {}  # layer path -> reason
    self.fixed_by = {}  # layer path -> class: layers that keep channels
    self._classes_seen = {}  # layer path -> class name
    self._seen_paths = set()

    shapes = input_shapes or [tuple(t.shape[1:]) for t in model.inputs]
    self.input_shapes = [tuple(s) for s in shapes]
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
    self._keep_cached_heads()
    self.num_labels = self._size  # the union-find is done
    self.groups, self.classes = _groups.make_groups(self)
    # Frozen: every label's root, once.
    self._roots = self.find(np.arange(self._size))

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
    """Root label of each label (after the analysis: a table lookup)."""
    if hasattr(self, "_roots"):
      return self._roots[np.asarray(labels, dtype=np.int64)]
    parent = self._parent
    roots = parent[np.asarray(labels, dtype=np.int64)]
    while True:
      up = parent[roots]
      if np.array_equal(up, roots):
        return roots
      roots = parent[up]

  def _union(self, a, b):
    if hasattr(self, "_roots"):
      raise RuntimeError("keras_epi: an Analysis is frozen once made.")
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

  def fix(self, labels, by=None):
    """Unites `labels` with FIXED; `by`: the layer that keeps them whole
    (recorded in `fixed_by` where they were free)."""
    labels = np.asarray(labels, dtype=np.int64)
    if labels.size:
      if by is not None and (self.find(labels) != FIXED).any():
        self.fixed_by.setdefault(by, self._classes_seen.get(by, ""))
      self._union(labels, np.zeros(len(labels), dtype=np.int64))

  def unite(self, a, b):
    self._union(np.asarray(a, np.int64), np.asarray(b, np.int64))

  def fixed(self, n):
    labels = self._new(n)
    self.fix(labels)
    return labels

  def produce(self, path, n):
    if path not in self._fresh:
      self._fresh[path] = self.sources[path] = self._new(n)
    return self._fresh[path]

  def merge(self, ins, n, path):
    if n is None:  # a tensor of unknown width: one pseudo-channel, kept
      for labels in ins:
        self.fix(labels)
      return self.fixed(1)
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
    for node in functional.topological_nodes(model):
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
    if rule is not None and self.through_norms and rule.approximate:
      rule = rule.approximate
    if rule is not None and rule.reshape:
      out_shapes = [layers_lib.filled_reshape(in_shapes[0], out_shapes[0])]
    if path in self.ignore or op.name in self.ignore:
      rule = layers_lib.IGNORED
    elif rule is None and isinstance(op, _L.Layer) and \
        internals.sublayers(op):
      expansion = self._expansion(op, node, in_shapes, out_shapes, path)
      if expansion is not None:
        self.layers[path] = op
        self.expansions[path] = expansion
        self._tie(path, in_labels)
        self.model_inputs.setdefault(id(expansion), in_labels)
        filled = functional.filled_shapes(expansion)
        if filled is None:
          return self._walk(expansion, ins, path + "/")
        # Traced at filled sizes (its call needs them): walked at those,
        # its outputs at the outer call's (open) sizes again.
        self.filled.add(path)
        if [tuple(s) for s in filled] != [tuple(s) for s in in_shapes]:
          self._open_inside.add(path)
        outs = self._walk(expansion, list(zip(in_labels, filled)),
                          path + "/")
        return [(labels, shape) for (labels, _), shape in zip(outs,
                                                               out_shapes)]
      rule = layers_lib.IGNORED
    if rule is None:
      rule = _probe.auto_rule(op, node, in_shapes, out_shapes,
                              self.unsupported, path)
    if isinstance(op, _L.Layer):
      self.layers[path] = op
    self._classes_seen[path] = type(op).__name__
    call = layers_lib.ChannelCall(self, path, in_labels, in_shapes,
                                  out_shapes, *internals.node_arguments(node),
                                  tensors=node.input_tensors)
    try:
      if rule.data_format and getattr(op, "data_format",
                                      "channels_last") != "channels_last":
        raise layers_lib.Unsupported(
            "data_format='channels_first' cannot be pruned (count_macs "
            "counts it; channels_last models prune)")
      if getattr(op, "weights", ()) or rule.config is not None:  # state
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
                  out_shapes, dict(call.sides), tuple(call.inner_sides),
                  any(prefix.startswith(p + "/") for p in self._open_inside))
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

  def _expansion(self, op, node, in_shapes, out_shapes, path):
    """A functional model of a composite layer's `call`, or None. A `call`
    that cannot be traced on symbolic inputs (raw TensorFlow ops) is probed
    on data instead: a layer that mixes its channels is kept whole, with a
    warning; one that does not must be registered (its sublayers would be
    cut blind)."""
    try:
      return functional.expand(op, node, in_shapes)
    except Exception as e:  # pylint: disable=broad-except
      traced = f"{type(e).__name__}: {str(e).strip().splitlines()[0]}"
    try:
      mixes = not _probe.probe_elementwise(op, node, in_shapes, out_shapes)
    except Exception as e:  # pylint: disable=broad-except
      mixes = None
      traced += f"; calling it on random data failed too ({e})"
    if mixes:
      logging.warning(
          "keras_epi: layer '%s' (%s) is a composite layer whose call cannot "
          "be traced on symbolic inputs (%s); called on data, it mixes its "
          "channels, so its input and output channels are kept whole.", path,
          type(op).__name__, traced)
      return None
    self.unsupported[path] = (
        f"{type(op).__name__}: a composite layer whose `call` could not be "
        f"traced on symbolic inputs ({traced})")
    return None

  def _keep_cached_heads(self):
    """A model that generates with a key-value cache (keras_hub's CausalLM:
    `call_with_cache`) lays the cache out for the backbone's number of
    heads in every layer: its attention heads are kept whole, so that
    `generate` works after the cut."""
    if not hasattr(self.model, "call_with_cache"):
      return
    heads = [(call.path, side) for call in self.calls.values()
             for side in call.inner]
    for path, side in heads:
      self.fix(self.calls[path].sides[side], by=path)
    if heads:
      logging.warning(
          "keras_epi: %s generates with a cache laid out for the same heads "
          "in every layer, so its attention heads are kept whole (its other "
          "widths prune). Prune its backbone for a model without "
          "generate().", type(self.model).__name__)

  def kept_whole_by(self, limit=6):
    """Which layers keep channels whole (they mix or normalise them), as a
    sentence for error messages; empty where none does."""
    if not self.fixed_by:
      return ""
    named = [f"'{p}' ({c})" for p, c in list(self.fixed_by.items())[:limit]]
    more = len(self.fixed_by) - limit
    return ("Channels are kept whole by " + ", ".join(named) +
            (f" and {more} more" if more > 0 else "") +
            ": layers that mix or normalise their channels, whose inputs "
            "cannot be pruned exactly.")

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
