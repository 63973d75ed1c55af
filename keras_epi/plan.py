"""A plan resolved once into per-layer cuts.

A *plan* is plain data: ``{group name: indices of the group's channels to
keep}`` (see `keras_epi.channel_groups`). `ResolvedPlan` turns it, once, into
what every consumer needs for one layer call: a keep mask of its input and
output channels, the weight slices its rule implies, and its widths. The
surgeon, the MAC counter, the masking of a training model and the transfer
of optimizer state all read the same object, so they cannot disagree.
"""

import numpy as np


class ResolvedPlan:
  """Per-layer channel masks of a plan over one `graph.Analysis`.

  Args:
    analysis: The analysis of the model the plan is for.
    keep: ``{group name: kept indices}``; groups not named stay whole.

  Raises:
    ValueError: if `keep` names an unknown group or has bad indices.
  """

  def __init__(self, analysis, keep):
    self.analysis = analysis
    self.removed = removed_labels(analysis, keep)  # validates `keep`
    self.keep = dict(keep)
    self._masks = {}

  def mask(self, labels):
    """Which channels of a tensor with these labels survive."""
    return ~self.removed[self.analysis.find(labels)]

  def masks(self, call):
    """``{"in", "out", "ins", "outs", "mid"}`` keep masks of one call, and
    one per further side its flow named (`ChannelCall.side`)."""
    key = id(call)
    if key not in self._masks:
      ins = [self.mask(l) for l in call.ins]
      outs = [self.mask(l) for l in call.outs]
      masks = {"ins": ins, "outs": outs, "in": ins[0] if ins else None,
               "out": outs[0] if outs else None,
               **{side: self.mask(l) for side, l in call.sides.items()}}
      if masks["in"] is not None and any(
          side == "mid" for axes in call.rule.weights.values()
          for _, side in axes):
        masks["mid"] = np.repeat(masks["in"], call.op.depth_multiplier)
      self._masks[key] = masks
    return self._masks[key]

  def cuts(self, path, weight_key):
    """``[(axis, mask)]`` that slice a weight of the layer at `path`
    (`weight_key`: its key in the rule, `keras_epi._weights.weight_keys`)."""
    call = self.analysis.calls[path]
    masks = self.masks(call)
    return [(axis, masks[side])
            for axis, side in call.rule.weight_axes(weight_key)
            if axis != "depthwise"]

  def cut(self, path, weight_key, value):
    """`value` (shaped like the weight, or one of its optimizer slots)
    with the removed channels taken out."""
    return cut(value, self.cuts(path, weight_key))

  def macs(self):
    """MACs of the pruned model for one example, without building it."""
    return sum(call_macs(call, self.masks(call))
               for call in self.analysis.all_calls)


def round_width(width, round_to, size, min_channels=1):
  """The one rounding rule of kept widths: `width` to the nearest multiple
  of `round_to` (Python's `round`, halves to even), at least `round_to` and
  `min_channels`, at most `size`; the full width is kept as it is (a group
  that loses no channel is not rounded down)."""
  if width >= size:
    return int(size)
  value = max(int(round(width / round_to)) * round_to, round_to)
  return int(np.clip(value, min(min_channels, size), size))


def cut_shape(shape, cuts):
  """The shape `cut` gives an array of `shape`, without making one."""
  shape = list(shape)
  for axis, mask in cuts:
    if shape and shape[axis] == len(mask):
      shape[axis] = int(np.sum(mask))
  return tuple(shape)


def cut(value, cuts):
  """Keeps the masked entries of `value` along each (axis, mask) cut."""
  value = np.asarray(value)
  for axis, mask in cuts:
    if value.ndim and value.shape[axis] == len(mask):
      value = np.compress(mask, value, axis=axis)
  return value


def counted_calls(analysis):
  """``[(key, call)]`` of the calls with a MAC formula, in graph order; the
  key is the layer's path, ``"path#k"`` for its call ``k >= 1``."""
  seen, out = {}, []
  for call in analysis.all_calls:
    if not call.rule.counted:
      continue
    k = seen.get(call.path, 0)
    seen[call.path] = k + 1
    out.append((call.path if k == 0 else f"{call.path}#{k}", call))
  return out


def open_calls(analysis):
  """The calls with a MAC formula whose input or output size is open
  (None): their MACs are unknown."""
  return [call for _, call in counted_calls(analysis)
          if call.filled or
          any(d is None for s in (*call.in_shapes, *call.out_shapes[:1])
              for d in s)]


def call_macs(call, masks=None):
  """MACs of one call for one example; `masks` gives the pruned widths."""
  rule = call.rule
  if not rule.counted:
    return 0
  if call.filled or any(d is None for s in (*call.in_shapes,
                                            *call.out_shapes[:1]) for d in s):
    raise ValueError(
        f"count_macs: layer '{call.path}' ({type(call.op).__name__}) has an "
        f"unknown shape (inputs {[tuple(s) for s in call.in_shapes]}, output "
        f"{tuple(call.out_shapes[0])}). Pass the input size to count at, "
        "e.g. count_macs(model, input_shape=(224, 224, 3)), or build the "
        "model on a fixed input shape.")
  if rule.call_macs is not None:
    return int(rule.call_macs(call, masks))
  in_shape = list(call.in_shapes[0]) if call.in_shapes else []
  out_shape = list(call.out_shapes[0])
  if getattr(call.op, "data_format", None) == "channels_first":
    # The formulas read channels last.
    in_shape = in_shape[1:] + in_shape[:1]
    out_shape = out_shape[1:] + out_shape[:1]
  elif masks is not None:
    if masks["in"] is not None and in_shape:
      in_shape[-1] = int(masks["in"].sum())
    out_shape[-1] = int(masks["out"].sum())
  return int(rule.macs(call.op, tuple(in_shape), tuple(out_shape)))


def removed_labels(analysis, keep):
  """Which root labels to remove for a `keep` mapping, as a boolean array
  indexed by label; validates `keep`."""
  if not hasattr(keep, "items"):
    raise ValueError(
        "`keep` must map group names to the channel indices to keep, "
        f"received {type(keep).__name__}.")
  removed = []
  for name, indices in keep.items():
    if name not in analysis.classes:
      known = list(analysis.classes)
      raise ValueError(
          f"`keep` names group {name!r}, which model '{analysis.model.name}' "
          f"does not have. Its groups are {known[:10]}"
          f"{'...' if len(known) > 10 else ''} (see keras_epi.channel_groups"
          "; pass the same `ignore` to both).")
    classes = analysis.classes[name]
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
  flags = np.zeros(analysis.num_labels, dtype=bool)
  for labels in removed:
    flags[labels] = True
  return flags
