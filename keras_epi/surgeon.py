"""Model surgery: physically remove channels from a functional Keras model.

`prune_model` takes a *plan* (group name -> channel indices to keep, see
`keras_epi.channel_groups`), resolves it once (`keras_epi.plan`), rebuilds
the model with narrower layers and copies every surviving weight. How one
layer type is cut (which weight axes follow which channels, how its config
changes) is its rule in the layer registry, `keras_epi.layers`.
"""

import functools

from absl import logging
import keras
import numpy as np

from keras_epi import _call_check as call_check
from keras_epi import _functional as functional
from keras_epi import _keras_internals as internals
from keras_epi import _model_class as model_class
from keras_epi import graph
from keras_epi import _weights as weights_lib
from keras_epi import layers as layers_lib
from keras_epi import plan as plan_lib

_L = keras.layers


def prune_model(model, keep, *, ignore=(), through_norms=False):
  """Returns a copy of `model` without the channels that `keep` leaves out.

  Every weight of a surviving channel is copied: conv, dense and transposed
  conv kernels on both channel axes, biases, BatchNormalization gamma, beta
  and moving statistics, depthwise and separable kernels, PReLU slopes, and
  the per-channel weights of registered or probed layers. A layer that
  loses channels is made from its config at the new widths (its weights'
  shapes checked against the plan), or, where its config does not
  round-trip, as a copy with its width attributes and variables made anew;
  every other layer, and a composite layer with nothing cut inside, is an
  object copy with new variables of the same values. A composite layer
  with channels cut inside becomes a functional model of its traced `call`
  (same name, same outputs). The result has `model`'s class and attributes
  (`keras_epi._model_class`: a class that rebuilds itself from constructor
  arguments, as keras_hub's do, becomes its ``Pruned`` subclass), saves as
  `.keras` and loads back where Keras loads `model`. Where anything was
  made other than by a built-in rule (a traced composite, a rebuilt
  keras.ops call, a registered or resized layer), the model is called on
  random inputs at batch sizes 1 and 2 before it is returned, and a layer
  that fails is named; a probed per-channel layer is called on its own at
  both batch sizes and must compute its kept channels exactly. The input
  model is not modified and shares no variables with the result.

  Args:
    model: A built functional or Sequential `keras.Model`.
    keep: Mapping from group name (`ChannelGroup.name`) to the indices of the
      group's channels to keep. Groups not named keep all their channels.
    ignore: The `ignore` given to `keras_epi.channel_groups` when the groups
      were computed.
    through_norms: The `through_norms` the plan was made with. With True,
      LayerNormalization and RMSNormalization over a cut stream keep the
      scale and offset of the kept channels and normalise over them: the
      result is not the model with those channels zeroed (approximate;
      see `keras_epi.channel_groups`).

  Returns:
    A new model of `model`'s class (Sequential if `model` is Sequential).

  Raises:
    ValueError: if `keep` names an unknown group, has out-of-range, repeated
      or no indices for a group, the model cannot be analysed (see
      `keras_epi.channel_groups`), a layer cannot be rebuilt at its new
      widths, or the pruned model fails when called (the message names the
      layer and the fix).

  Example:
  >>> groups = keras_epi.channel_groups(model)
  >>> keep = {g.name: range(g.size // 2) for g in groups}
  >>> small = keras_epi.prune_model(model, keep)
  """
  return prune_with_surgeon(model, keep, ignore,
                            through_norms=through_norms)[0]


def prune_with_surgeon(model, keep, ignore=(), analysis=None,
                       through_norms=False):
  """`prune_model` that also returns the surgeon, whose `weight_pairs` maps
  old variables to new ones (for optimizer-state transfer). Internal."""
  analysis = analysis or graph.analyze(model, ignore,
                                       through_norms=through_norms)
  surgeon = Surgeon(plan_lib.ResolvedPlan(analysis, keep))
  return surgeon.model(model, ""), surgeon


class Surgeon:
  """Rebuilds models and layers for one resolved plan (internal)."""

  def __init__(self, plan):
    self.plan = plan
    self._analysis = plan.analysis
    self._models = {}  # id(old model) -> new model
    self._layers = {}  # path -> (old layer, new layer)
    self._copied = set()  # paths of layers copied as they are
    # What keras_epi did not make by a built-in rule at the new widths (a
    # traced composite, a rebuilt keras.ops call, a user's layer, a resized
    # copy): the model is then called before it is returned.
    self.untried = []
    # Untouched layers are copied as objects (their class, attributes and
    # `call`), with what was rebuilt in place of the originals they hold.
    self._copier = internals.Copier()

  def model(self, model, prefix):
    """The rebuilt (and, at the top, weight-loaded) copy of a model."""
    if id(model) in self._models:
      return self._models[id(model)]
    if prefix:  # nested: inputs may have lost channels
      labels = self._analysis.model_inputs[id(model)]
    else:
      labels = [None] * len(model.inputs)
    inputs = []
    for tensor, lab in zip(model.inputs, labels):
      shape = list(tensor.shape[1:])
      if lab is not None and shape:
        shape[-1] = int(self.plan.mask(lab).sum())
      inputs.append(functional.new_input(tensor, shape))

    def operation_for(op):
      path = prefix + op.name
      if isinstance(op, keras.Model):
        return self.model(op, path + "/")
      if path in self._analysis.expansions and self._changed_inside(path):
        self.untried.append(path)
        if path in self._analysis.filled:
          return self._copy_with_changes(op, path)
        return self.model(self._analysis.expansions[path], path + "/")
      if path in self._analysis.expansions:
        return self._copy(op, path)
      if not isinstance(op, _L.Layer):  # a keras.ops operation
        call = self._analysis.calls.get(path)
        if call is not None and call.rule.rebuild is not None:
          new = call.rule.rebuild(op, self.plan.masks(call), call)
          if new is not op:
            self.untried.append(path)
          return new
        return op
      return self._layer(op, path)

    def call_for(op):
      new = operation_for(op)
      expanded = isinstance(new, keras.Model) and not isinstance(
          op, keras.Model)

      named = call_check.named(new, prefix + op.name, type(op).__name__,
                               "does not take its pruned inputs")

      def call(*args, **kwargs):
        if expanded:  # a composite layer whose sublayers changed: the
          # functional model of its traced `call`, on the same tensors
          args = ([t for t in keras.tree.flatten((args, kwargs))
                   if isinstance(t, keras.KerasTensor)],)
          kwargs = {"training": kwargs.get("training")}
        return (new if isinstance(op, keras.Model) else named)(*args,
                                                               **kwargs)
      return call

    new = functional.rebuild(
        model, inputs, operation_for, call_for,
        make=lambda i, o: model_class.functional_like(
            model, i, o, self._copier,
            None if prefix else (self.plan.keep, self._analysis.ignore,
                                 self._analysis.groups,
                                 self._analysis.through_norms)))
    self._models[id(model)] = new
    self._copier.use(model, new)
    if not prefix:
      self._load_weights()
      self._check_probed_layers()
      if self.untried:
        call_check.check_calls(model, new, self.plan)
    return new

  def _copy_with_changes(self, layer, path):
    """A composite layer whose `call` needs sizes its graph cannot keep
    open (traced at filled sizes, `_functional.expand`): an object copy of
    it, its own `call` and attributes, holding the narrower sublayers made
    for the plan in place of the originals."""
    inside = path + "/"
    for call in self._analysis.all_calls:
      if (call.path.startswith(inside) and isinstance(call.op, _L.Layer) and
          call.path not in self._analysis.expansions and
          not self._untouched(call)):
        self._layer(call.op, call.path)  # the copier uses it from now on
    return self._copy(layer, path)

  def _changed_inside(self, path):
    """Whether a plan cuts channels of a call inside the composite layer at
    `path`."""
    inside = path + "/"
    return any(not self._untouched(call) for call in self._analysis.all_calls
               if call.path.startswith(inside))

  def _untouched(self, call):
    masks = self.plan.masks(call)
    return all(m.all() for m in masks["ins"] + masks["outs"] +
               [masks[side] for side in call.sides])

  def _copy(self, layer, path):
    """`layer` as it is: an object copy with new variables of the same
    values (its config is not used, so any layer comes through)."""
    if path not in self._layers:
      new = self._copier.layer(layer)
      self._layers[path] = (layer, new)
      self._copied.add(path)
    return self._layers[path][1]

  def _layer(self, layer, path):
    if path in self._layers:
      return self._layers[path][1]
    call = self._analysis.calls[path]
    if not call.rule.auto and all(self._untouched(c) for c in
                                  self._analysis.all_calls
                                  if c.path == path):
      return self._copy(layer, path)
    new = self._rebuilt(layer, call)
    self._copier.use(layer, new)
    return new

  def _rebuilt(self, layer, call):
    """`layer` for the plan's widths: made anew from its config, which its
    rule rewrites; where the config does not round-trip (a regularizer or
    activation that does not serialise, an `__init__` without `**kwargs`),
    a copy whose width attributes are rewritten and whose variables are
    made anew by its `build`. A stateless layer computes the same at any
    width: it is copied."""
    path = call.path
    if not (call.rule.auto or layers_lib.is_builtin(call.rule)):
      self.untried.append(path)  # a user's layer (a probed one is checked
      # on its own, `_check_probed_layers`)
    if not layer.weights and call.rule.config is None:
      return self._copy(layer, path)
    masks = self.plan.masks(call)
    n_in = int(masks["in"].sum()) if masks["in"] is not None else None
    n_out = int(masks["out"].sum())
    if call.rule.auto:
      config = layer.get_config()
      if call.rule.config is not None:
        config = call.rule.config(layer, config, n_in, n_out)
      new = self._probed_layer(call, config, masks)
    else:
      try:
        config = layer.get_config()
        if call.rule.config is not None:
          config = call.rule.config(layer, config, n_in, n_out)
        if call.rule.config_sides is not None:
          config = call.rule.config_sides(layer, config, masks)
        new = functional.layer_from_config(layer, config)
        self._build_as_planned(new, call, masks)
      except Exception as e:  # pylint: disable=broad-except
        new = self._resized_copy(layer, call, masks, e)
        self.untried.append(path)  # a copy made narrower
    self._layers[path] = (layer, new)
    return new

  def _build_as_planned(self, new, call, masks):
    """Builds `new` at the call's pruned input widths; a ValueError unless
    its weights have the shapes the plan cuts the original's to."""
    if not new.built:
      _build_at_plan(new, call, masks)
    expected = self._expected_shapes(call)
    got = [tuple(w.shape) for w in new.weights]
    if got != expected:
      raise ValueError(f"its weights came out {got}, not {expected}")

  def _expected_shapes(self, call):
    """The shapes of a layer's weights cut by the plan."""
    return [plan_lib.cut_shape(w.shape, self.plan.cuts(call.path, key))
            for key, w in zip(weights_lib.weight_keys(call.op),
                              call.op.weights)]

  def _resized_copy(self, layer, call, masks, error):
    """`_rebuilt`'s copy of a layer whose config does not round-trip."""
    n_in = int(masks["in"].sum()) if masks["in"] is not None else None
    n_out = int(masks["out"].sum())
    attributes = {k: v for k, v in vars(layer).items()
                  if not k.startswith("_")}
    rewritten = (call.rule.config(layer, dict(attributes), n_in, n_out)
                 if call.rule.config is not None else dict(attributes))
    if call.rule.config_sides is not None:
      rewritten = call.rule.config_sides(layer, rewritten, masks)
    changes = {k: v for k, v in rewritten.items()
               if k not in attributes or attributes[k] is not v}
    try:
      new = internals.resized_copy(
          layer, changes, lambda new: _build_at_plan(new, call, masks))
      self._build_as_planned(new, call, masks)
    except Exception as e:  # pylint: disable=broad-except
      raise ValueError(
          f"keras_epi cannot rebuild layer '{call.path}' "
          f"({type(layer).__name__}) with {n_out} output channels: its class "
          f"cannot be made from its config ({type(error).__name__}: "
          f"{call_check.first_line(error)}), nor its copy rebuilt at the new "
          f"widths ({call_check.first_line(e)}). Make "
          "its get_config and from_config round-trip (a `**kwargs` in "
          "__init__, serialisable arguments), or keep its channels with "
          f"ignore=[{call.path!r}].") from error
    return new

  def _probed_layer(self, call, config, masks):
    """A probed elementwise layer rebuilt for its new width: its config is
    used as it is, or with the one integer entry that holds the width."""
    layer = call.op
    shapes = _pruned_shapes(call, masks)
    expected = self._expected_shapes(call)
    old_width = len(masks["out"])
    candidates = [None] + [k for k, v in config.items()
                           if type(v) is int and v == old_width]  # pylint: disable=unidiomatic-typecheck
    for key in candidates:
      trial = dict(config)
      if key is not None:
        trial[key] = int(masks["out"].sum())
      try:
        new = functional.layer_from_config(layer, trial)
        new.build(shapes[0] if len(shapes) == 1 else shapes)
      except Exception:  # pylint: disable=broad-except
        continue
      if [tuple(w.shape) for w in new.weights] == expected:
        return new
    raise ValueError(
        f"keras_epi cannot rebuild layer '{call.path}' "
        f"({type(layer).__name__}) with {int(masks['out'].sum())} channels: "
        "its weights do not follow its input width. Register it with the "
        "config key of its width, e.g. keras_epi.register_layer("
        f"{type(layer).__name__}, channels='elementwise', weights=..., "
        "width='CONFIG_KEY').")

  def _check_probed_layers(self):
    """Each probed layer, rebuilt, must compute its kept channels exactly."""
    for path, (old, new) in self._layers.items():
      call = self._analysis.calls.get(path)  # None: a composite copied
      if call is None or not call.rule.auto or path in self._copied:
        continue
      masks = self.plan.masks(call)
      rng = np.random.default_rng(0)
      for batch in call_check.CHECK_BATCH_SIZES:
        xs = [rng.normal(size=(batch, *[5 if d is None else d for d in s]))
              .astype("float32") for s in call.in_shapes]
        old_out = call_check.calls(old, xs[0] if len(xs) == 1 else xs)
        if old_out is None:
          continue  # the layer itself does not run at this batch size
        old_out = keras.ops.convert_to_numpy(old_out)
        small = [np.compress(m, x, axis=-1)
                 for x, m in zip(xs, masks["ins"])]
        new_out = keras.ops.convert_to_numpy(
            call_check.named(new, path, type(old).__name__,
                             f"fails when called (at batch size {batch})")(
                                 small[0] if len(small) == 1 else small))
        want = np.compress(masks["out"], old_out, axis=-1)
        if want.shape == new_out.shape and np.allclose(
            want, new_out, rtol=1e-4, atol=1e-5):
          continue
        raise ValueError(
            f"keras_epi: layer '{path}' ({type(old).__name__}) looked "
            "per-channel, but rebuilt without the removed channels it "
            "computes something else. Register it with keras_epi."
            "register_layer (see its docstring) or pass it in `ignore=`.")

  def weight_pairs(self):
    """Yields ``(old variable, new variable, slice)`` for every weight, where
    ``slice(array)`` cuts an array shaped like the old variable (its value or
    an optimizer slot) to the new variable's shape. A weight of a
    narrower sublayer of a copied composite is yielded with its sublayer's
    cut, once."""
    rebuilt = {id(w) for path, (old, _) in self._layers.items()
               if path not in self._copied for w in old.weights}
    for path, (old, new) in self._layers.items():
      copied = path in self._copied
      for key, old_weight, new_weight in zip(weights_lib.weight_keys(old),
                                             old.weights, new.weights):
        if copied and id(old_weight) in rebuilt:
          continue
        cuts = [] if copied else self.plan.cuts(path, key)
        yield old_weight, new_weight, functools.partial(plan_lib.cut,
                                                        cuts=cuts)

  def _load_weights(self):
    copied = {id(self._layers[p][1]) for p in self._copied}
    for path, (old, new) in self._layers.items():
      if id(new) in copied:
        continue  # its variables were made with the values
      for key, old_weight, new_weight in zip(weights_lib.weight_keys(old),
                                             old.weights, new.weights):
        self._load(old_weight, new_weight, path, key)
    logging.vlog(1, "keras_epi: rebuilt %d layers", len(self._layers))

  def _load(self, old, new, path, key):
    """`new` = `old` sliced by the plan."""
    value = plan_lib.cut(keras.ops.convert_to_numpy(old),
                         self.plan.cuts(path, key))
    if value.shape != tuple(new.shape):
      raise AssertionError(
          f"keras_epi surgeon: weight '{old.path}' expects shape "
          f"{tuple(new.shape)}, sliced {value.shape}. Please report this; "
          "pass the layer in `ignore=` meanwhile.")
    new.assign(value)


model_class.use_pruner(prune_model)  # for Pruned models read from a file

def _build_at_plan(new, call, masks):
  """Builds `new`, a layer made for `call` cut by `masks`: by its rule's
  `build` where it has one, else at the call's pruned input shapes."""
  if call.rule.build is not None:
    call.rule.build(new, masks, call)
    return
  shapes = _pruned_shapes(call, masks)
  new.build(shapes[0] if len(shapes) == 1 else shapes)


def _pruned_shapes(call, masks):
  """The per-call input shapes (batch None) at the plan's widths."""
  return [(None, *s[:-1], int(m.sum()))
          for s, m in zip(call.in_shapes, masks["ins"])]
