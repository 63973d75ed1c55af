"""A pruned model of the caller's class, and how it saves (internal).

`functional_like` gives the pruned graph the class of the model it was cut
from, with that model's own attributes (a keras_hub task's preprocessor, a
model's metric trackers) copied, so that its `train_step`, `predict` and
task API are the original's.

Keras revives a functional subclass from its functional config when the
class keeps Keras' `get_config` / `from_config` and a functional
constructor (a user's `class MyModel(keras.Model)` that only overrides
`train_step`): such a model keeps its exact class. A class that rebuilds
itself from constructor arguments (keras_hub's tasks and backbones: a
`ResNetBackbone(stackwise_num_filters=...)` config describes the dense
widths) could not load a pruned instance; it becomes a subclass made here,
``Pruned<Class>``, saved under the registered name ``keras_epi>PrunedModel``
as its recipe: the dense model's serialisation and the plan, which
`keras.saving.load_model` (where keras_epi is imported) builds and cuts
again before it loads the weights. Where the dense model does not
serialise, or its config does not give back its weights' shapes, the
functional graph and the attributes are saved instead.
"""

import functools
import importlib
import inspect
import json

import keras

from keras_epi import _keras_internals as internals
from keras_epi import graph

REGISTERED_NAME = "keras_epi>PrunedModel"
_KEY = "keras_epi"


@functools.lru_cache(maxsize=None)
def functional_class():
  """Keras' Functional class (what `keras.Model(inputs, outputs)` is)."""
  x = keras.Input((1,))
  return type(keras.Model(x, x))


def functional_like(old, inputs, outputs, copier, plan=None):
  """A functional model of `inputs` and `outputs` with `old`'s name, of
  `old`'s class (or its ``Pruned`` subclass, see the module docstring),
  its own attributes copied by `copier` (an `internals.Copier`). `plan`,
  ``(keep, ignore, groups, through_norms)``, is what a ``Pruned`` model
  saves with `old`."""
  functional = functional_class()
  cls = type(old)
  if cls in (keras.Model, functional):
    return keras.Model(inputs=inputs, outputs=outputs, name=old.name)
  if not _revivable(cls) and not issubclass(cls, _Pruned):
    cls = pruned_class(cls)
  new = cls.__new__(cls)
  # A functional subclass has Functional among its bases already (Keras put
  # it there when the original was made).
  functional.__init__(new, inputs, outputs, name=old.name)
  copier.set_attributes(old, new, set(new.__dict__) | internals.TRAINER |
                        {_RECIPE})
  if isinstance(new, _Pruned):
    new.__dict__[_RECIPE] = _recipe(old, plan)
  return new


_RECIPE = "_keras_epi_recipe"
# `keras_epi.prune_model`, which builds a recipe's model again (the surgeon
# gives it with `use_pruner`; it imports this module, not this module it).
_PRUNER = [None]


def use_pruner(prune_model):
  _PRUNER[0] = prune_model


def _recipe(old, plan):
  """What a ``Pruned`` model saves: `old` serialised and the plan, or None
  where `old` does not serialise or there is no plan."""
  if plan is None:
    return None
  keep, ignore, groups, through_norms = plan
  try:
    dense = keras.saving.serialize_keras_object(old)
    json.dumps(dense)
  except Exception:  # pylint: disable=broad-except
    return None
  # By the groups' order and sizes too: names of layers that a composite
  # layer makes in its __init__ are Keras' automatic ones, which differ in
  # another process.
  order = {g.name: (i, g.size) for i, g in enumerate(groups)}
  return {"dense": dense, "ignore": list(ignore),
          "through_norms": through_norms,
          "keep": [[name, *order[name], [int(i) for i in kept]]
                   for name, kept in keep.items()],
          "shapes": [list(w.shape) for w in old.weights]}


def _rebuilds(recipe):
  """Whether the dense model a recipe serialises comes back with the
  original's weights: some classes' configs do not describe the model
  they made (then the functional graph is saved instead)."""
  try:
    dense = keras.saving.deserialize_keras_object(recipe["dense"])
  except Exception:  # pylint: disable=broad-except
    return False
  return [list(w.shape) for w in dense.weights] == recipe["shapes"]


def _revivable(cls):
  """Whether Keras rebuilds `cls` from a functional config by itself."""
  functional = functional_class()
  return (cls.get_config is functional.get_config and
          getattr(cls.from_config, "__func__", None) is
          keras.Model.from_config.__func__ and
          _functional_constructor(cls))


def _functional_constructor(cls):
  spec = inspect.getfullargspec(cls.__init__)
  functional = inspect.getfullargspec(functional_class().__init__)
  return spec.args[1:] == functional.args[1:] or (
      spec.varargs is not None and spec.varkw is not None)


class _Pruned:
  """What ``Pruned<Class>`` adds to its class: saving as a functional
  graph plus the attributes that the class's own config carried."""

  def __init__(self, inputs, outputs, name=None, **kwargs):  # pylint: disable=super-init-not-called
    functional_class().__init__(self, inputs, outputs, name=name, **kwargs)

  def get_config(self):
    recipe = self.__dict__.get(_RECIPE)
    if recipe is not None and recipe.setdefault("rebuilds",
                                                _rebuilds(recipe)):
      saved = {k: recipe[k] for k in ("dense", "ignore", "keep",
                                      "through_norms")}
      return {"name": self.name, _KEY: {"recipe": saved}}
    config = functional_class().get_config(self)
    base = type(self).__mro__[2]  # Pruned<Class>(_Pruned, Class)
    in_graph = {id(layer): layer.name for layer in self.layers}
    attributes = {}
    for name, value in self.__dict__.items():
      if name.startswith("_") or name in internals.TRAINER:
        continue
      if id(value) in in_graph:
        attributes[name] = {"layer": in_graph[id(value)]}
      elif isinstance(value, (keras.layers.Layer, keras.Operation)):
        attributes[name] = {"object":
                            keras.saving.serialize_keras_object(value)}
      elif isinstance(value, (bool, int, float, str, type(None))):
        attributes[name] = {"value": value}
    config[_KEY] = {"module": base.__module__, "class": base.__qualname__,
                    "attributes": attributes}
    return config

  @classmethod
  def from_config(cls, config, custom_objects=None):
    config = dict(config)
    meta = config.pop(_KEY)
    if "recipe" in meta:
      recipe = meta["recipe"]
      dense = keras.saving.deserialize_keras_object(
          recipe["dense"], custom_objects=custom_objects)
      return _PRUNER[0](dense, _plan_of(dense, recipe),
                        ignore=recipe["ignore"],
                        through_norms=recipe.get("through_norms", False))
    base = getattr(importlib.import_module(meta["module"]), meta["class"])
    model = keras.Model.from_config.__func__(pruned_class(base), config,
                                              custom_objects)
    for name, spec in meta["attributes"].items():
      if "layer" in spec:
        value = model.get_layer(spec["layer"])
      elif "object" in spec:
        value = keras.saving.deserialize_keras_object(
            spec["object"], custom_objects=custom_objects)
      else:
        value = spec["value"]
      setattr(model, name, value)
    return model


def _plan_of(dense, recipe):
  """A recipe's plan for the rebuilt `dense`: by group name, or, where the
  names differ, by the groups' order (their sizes must agree)."""
  groups = graph.channel_groups(
      dense, ignore=recipe["ignore"],
      through_norms=recipe.get("through_norms", False))
  names = {g.name for g in groups}
  if all(name in names for name, *_ in recipe["keep"]):
    return {name: kept for name, _, _, kept in recipe["keep"]}
  plan = {}
  for name, index, size, kept in recipe["keep"]:
    if index >= len(groups) or groups[index].size != size:
      raise ValueError(
          f"keras_epi: the pruned model's recipe names group {name!r} "
          f"({size} channels, group {index}), which the model rebuilt from "
          "its config does not have: it was saved with another version of "
          "its library.")
    plan[groups[index].name] = kept
  return plan


@functools.lru_cache(maxsize=None)
def pruned_class(base):
  """``Pruned<base>``: `base` that saves as its functional graph."""
  cls = type(f"Pruned{base.__name__}", (_Pruned, base), {
      "__module__": __name__,
      "__doc__": f"A pruned `{base.__module__}.{base.__qualname__}` "
                 "(keras_epi): the class, saving as its functional graph."})
  # Saved under one registered name, whatever the base: its `from_config`
  # finds the base in the config (`_Loader` holds the name before any
  # Pruned class exists, as when a file is loaded in a new process).
  return keras.saving.register_keras_serializable(
      package="keras_epi", name="PrunedModel")(cls)


@keras.saving.register_keras_serializable(package="keras_epi",
                                          name="PrunedModel")
class _Loader(_Pruned, keras.Model):
  """The class `keras_epi>PrunedModel` loads through: its `from_config`
  makes the ``Pruned<Class>`` of the class the config names."""
