"""What a flow function sees of one call of a layer (see
`keras_epi.layers.LayerRule`): `ChannelCall`, and `Unsupported`, the error
a flow raises for a call it cannot prune through. `keras_epi.layers`
re-exports both.
"""

import numpy as np


class ChannelCall:
  """What a flow function sees of one call of a layer (see `LayerRule`).

  Attributes:
    inputs: For every input tensor, an integer array of channel labels, one
      per channel of its last axis. Equal labels must be pruned together.
    input_shapes: Per-example shapes of the inputs (no batch axis).
    output_shapes: Per-example shapes of the outputs.
    arguments: The call's positional arguments (tensors as KerasTensors).
    keyword_arguments: The call's keyword arguments.
    tensors: The input tensors `inputs` label, in order.
  """

  def __init__(self, analysis, path, inputs, input_shapes, output_shapes,
               arguments=(), keyword_arguments=None, tensors=()):
    self._analysis = analysis
    self.path = path
    self.inputs = inputs
    self.input_shapes = input_shapes
    self.output_shapes = output_shapes
    self.arguments = arguments
    self.keyword_arguments = keyword_arguments or {}
    self.tensors = list(tensors)
    self.sides = {}  # side name -> labels (`side`, `inner`)
    self.inner_sides = []  # the sides that are the layer's own channels

  def labels_of(self, tensor):
    """The labels and per-example shape of one of the call's input
    tensors (a KerasTensor among its arguments)."""
    for t, labels, shape in zip(self.tensors, self.inputs,
                                self.input_shapes):
      if t is tensor:
        return labels, shape
    raise Unsupported(f"{tensor!r} is not an input of the call")

  def side(self, name, labels):
    """Names the channels `labels` for the layer's weights: a weight axis
    of side `name` (in the rule's `weights`) follows them."""
    self.sides[name] = np.asarray(labels, dtype=np.int64)

  def inner(self, name, n_or_labels):
    """Channels of the layer's own that no tensor carries (an attention
    layer's heads): fresh labels for `n` of them, or the given labels (of
    another inner side: GQA's query heads repeat its key-value heads).
    They form channel groups whose members are written
    ``"layer_path:name"``; returns the labels."""
    if isinstance(n_or_labels, (int, np.integer)):
      labels = self._analysis.produce(f"{self.path}:{name}", int(n_or_labels))
    else:
      labels = np.asarray(n_or_labels, dtype=np.int64)
    self.side(name, labels)
    self.inner_sides.append(name)
    return labels

  def produce(self, n):
    """Fresh labels for `n` channels this layer creates (a producer)."""
    return self._analysis.produce(self.path, n)

  def fix(self, labels):
    """Marks channels that must be kept (this layer keeps them whole)."""
    self._analysis.fix(labels, by=self.path)

  def unite(self, a, b):
    """Couples the channels of label arrays `a` and `b` (equal lengths)
    pairwise: they are removed together."""
    self._analysis.unite(a, b)

  def fixed(self, n):
    """Labels for `n` channels that must be kept."""
    return self._analysis.fixed(n)

  def merge(self, inputs=None):
    """Couples inputs channel by channel (broadcasting single channels);
    returns the labels of the result."""
    inputs = self.inputs if inputs is None else inputs
    return self._analysis.merge(inputs, self.output_shapes[0][-1], self.path)

  def unsupported(self, reason):
    """Raises the error that tells the user to register or ignore the
    layer."""
    raise Unsupported(reason)


class Unsupported(Exception):
  """A layer keras_epi cannot prune through (internal)."""
