"""Channel groups from a label propagation (internal to `keras_epi.graph`):
the classes of labels linked by sharing a producer, and every layer that
carries each group's channels.
"""

import dataclasses

from absl import logging
import keras
import numpy as np

FIXED = 0  # the label of channels that must stay (as in keras_epi.graph)


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
      layer after a split of the group's channels, as in CSPNet). Where a
      layer carries each channel ``k`` times
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



def make_groups(analysis):
  """``(groups, {group name: its label classes})`` of a finished label
  propagation: classes linked by sharing a producer (see
  `keras_epi.graph`)."""
  class_order = []  # classes in order of first appearance in a source
  component = {}  # class -> component id (first source's path)
  for path, labels in analysis.sources.items():
    roots = [r for r in dict.fromkeys(analysis.find(labels)) if r != FIXED]
    linked = {component[r] for r in roots if r in component} | {path}
    name = next(p for p in analysis.sources if p in linked)  # earliest source
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
  for call in analysis.all_calls:
    if call.rule.residual and call.outs:
      for r in analysis.find(call.outs[0]):
        if r in component:
          residual_groups.add(component[r])
  groups, classes = [], {}
  for name, members in _all_members(analysis, by_group).items():
    if members is None:
      continue
    residual = name in residual_groups
    groups.append(ChannelGroup(name=name, size=len(by_group[name]),
                               members=members, residual=residual))
    classes[name] = by_group[name]
  return groups, classes

def _all_members(analysis, group_classes):
  """``{group name: members, or None}`` for ``{name: class labels}``, in
  one pass over the calls (None: the group reaches a layer in part)."""
  names = list(group_classes)
  group_of = np.full(analysis.num_labels, -1, dtype=np.int64)  # root -> group
  channel_of = np.zeros(analysis.num_labels, dtype=np.int64)  # root -> channel
  for index, name in enumerate(names):
    group_of[group_classes[name]] = index
    channel_of[group_classes[name]] = np.arange(len(group_classes[name]))
  members = {name: [] for name in names}
  carriers = []  # (member path, labels): outputs, and inner sides
  for path, call in analysis.calls.items():
    if not isinstance(call.op, keras.layers.Layer):
      continue
    if len(call.outs) == 1:
      carriers.append((path, call.outs[0]))
    carriers += [(f"{path}:{side}", call.sides[side])
                 for side in call.inner]
  for path, labels in carriers:
    roots = analysis.find(labels)
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
