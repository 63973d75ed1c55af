"""Built-in rules of the layer registry for attention layers and EinsumDense
(internal; the rest of the table is `keras_epi._builtin_layers`).

An attention head is a unit that can be removed exactly: the layer's output
is the sum over heads of each head's output projection, so a head whose
value projection is zero adds nothing, and cutting its slices of the
query, key, value and output kernels leaves the other heads' outputs as
they were. GroupedQueryAttention's unit is a key-value head with the query
heads that share it (query head h reads key-value head h // repeats).
"""

import math

import keras
import numpy as np

from keras_epi import _builtin_layers
from keras_epi import _keras_internals as internals
from keras_epi import layers

_L = keras.layers
_Rule = layers.LayerRule

_ROLES = ("query", "value", "key")
_MHA_ARGUMENTS = ("query", "value", "key")  # call(query, value, key=None)


def _attention_tensors(args, kwargs, names=_MHA_ARGUMENTS):
  """``{role: tensor}`` of an attention call, for the query, value and key
  roles; `names` are the call's arguments for them, in its order (one name
  for a self-attention layer's one input). A key not given is the value."""
  args = list(args)
  found = {}
  for i, name in enumerate(dict.fromkeys(names)):
    found[name] = args[i] if i < len(args) else kwargs.get(name)
  tensors = {role: found.get(name) for role, name in zip(
      _ROLES, names if len(names) == 3 else names * 3)}
  if tensors["key"] is None:
    tensors["key"] = tensors["value"]
  return tensors


def _attention_flow(heads_of, names=_MHA_ARGUMENTS):
  """The flow of an attention layer whose heads `heads_of(layer)` gives
  as ``(units, query heads per unit)``: the query, key and value inputs
  are sides of its projections, the units an inner side ("heads", and
  "query_heads" where several query heads share a unit), the output new
  channels (a multi-axis `output_shape` keeps them whole; where the layer
  makes its output as wide as its query, they are coupled)."""
  def flow(layer, call):
    tensors = _attention_tensors(call.arguments, call.keyword_arguments,
                                 names)
    if tensors["query"] is None or tensors["value"] is None:
      call.unsupported("an attention call without query and value tensors")
    for role in _ROLES:
      call.side(f"{role}_in", call.labels_of(tensors[role])[0])
    used = {id(t) for t in tensors.values()}
    for tensor, labels in zip(call.tensors, call.inputs):
      if id(tensor) not in used:
        call.fix(labels)  # masks, caches: kept as they are
    units, repeats = heads_of(layer)
    heads = call.inner("heads", units)
    if repeats > 1:
      call.inner("query_heads", np.repeat(heads, repeats))
    out_shape = call.output_shapes[0]
    if _output_dims(layer) > 1:  # a multi-axis output_shape: kept whole
      out = call.fixed(layers.width_of(out_shape))
    else:
      out = call.produce(out_shape[-1])
      if "output_shape" not in _config(layer):  # as wide as the query
        call.unite(out, call.sides["query_in"])
    return [out] + [call.fixed(layers.width_of(s))
                    for s in call.output_shapes[1:]]  # attention scores
  return flow


def _output_dims(layer):
  """How many axes a MultiHeadAttention's `output_shape` gives (1 for the
  query's width)."""
  shape = _config(layer).get("output_shape")
  if shape is None or isinstance(shape, int):
    return 1
  return len(tuple(shape))


def _config(layer):
  """The layer's config, or {} where it has none (a layer made inside
  another whose `__init__` arguments it does not serialise)."""
  try:
    return layer.get_config()
  except NotImplementedError:
    return {}


def _mha_heads(layer):
  return layer.num_heads, 1


def _grouped_heads(layer):
  """Key-value heads and the query heads that share each."""
  return (layer.num_key_value_heads,
          layer.num_query_heads // layer.num_key_value_heads)


def _mha_config(layer, config, masks):
  del layer
  config["num_heads"] = int(masks["heads"].sum())
  n_out, n_query = int(masks["out"].sum()), int(masks["query_in"].sum())
  if config.get("output_shape") is not None or n_out != n_query:
    config["output_shape"] = n_out
  return config


def _grouped_config(layer, config, masks):
  """Kept key-value heads, each with its query heads (a config, or the
  attributes of a layer whose config does not describe it)."""
  units = int(masks["heads"].sum())
  config["num_query_heads"] = units * (layer.num_query_heads //
                                       layer.num_key_value_heads)
  config["num_key_value_heads"] = units
  return config


def _attention_build(names=_MHA_ARGUMENTS):
  """`build` at the pruned widths: ``build(query, value, key shapes)``,
  or the one input's shape of a self-attention layer."""
  def build(layer, masks, call):
    args, kwargs = internals.node_arguments(call.node)
    tensors = _attention_tensors(args, kwargs, names)
    shapes = {}
    for role, shape in zip(_ROLES, _attention_in_shapes(call, tensors)):
      shapes[role] = (None, *shape[:-1], int(masks[f"{role}_in"].sum()))
    if len(set(names)) == 1:
      layer.build(shapes["query"])
    else:
      layer.build(shapes["query"], shapes["value"], shapes["key"])
  return build


def _attention_macs(heads_of, head_dims_of, names=_MHA_ARGUMENTS):
  """MACs of an attention call per example: the query, key, value and
  output projections and the two products over the sequence axes."""
  def call_macs(call, masks):
    layer = call.op
    args, kwargs = internals.node_arguments(call.node)
    tensors = _attention_tensors(args, kwargs, names)
    units, repeats = heads_of(layer)
    kept = units if masks is None else int(masks["heads"].sum())
    query_heads, kv_heads = kept * repeats, kept
    key_dim, value_dim = head_dims_of(layer)
    shapes = dict(zip(_ROLES, _attention_in_shapes(call, tensors)))
    length = {role: math.prod(shape[:-1]) for role, shape in shapes.items()}
    width = {role: shape[-1] if masks is None else
             int(masks[f"{role}_in"].sum()) for role, shape in shapes.items()}
    out = call.out_shapes[0][-1] if masks is None else int(
        masks["out"].sum())
    return (length["query"] * width["query"] * query_heads * key_dim +
            length["key"] * width["key"] * kv_heads * key_dim +
            length["value"] * width["value"] * kv_heads * value_dim +
            query_heads * length["query"] * length["key"] *
            (key_dim + value_dim) +
            length["query"] * query_heads * value_dim * out)
  return call_macs


def _attention_in_shapes(call, tensors):
  """The analysis' (outermost call's) per-example shapes of the query,
  value and key tensors."""
  by_id = {id(t): s for t, s in zip(call.node.input_tensors, call.in_shapes)}
  return [by_id[id(tensors[role])] for role in _ROLES]


def _projection_weights(query_heads="heads", gate=False):
  """The weights of a Keras attention layer's projections, by key."""
  weights = {
      "query/kernel": ((0, "query_in"), (1, query_heads)),
      "query/bias": ((0, query_heads),),
      "key/kernel": ((0, "key_in"), (1, "heads")),
      "key/bias": ((0, "heads"),),
      "value/kernel": ((0, "value_in"), (1, "heads")),
      "value/bias": ((0, "heads"),),
      "attention_output/kernel": ((0, query_heads), (2, "out")),
      "attention_output/bias": ((0, "out"),),
  }
  if gate:
    weights.update({"gate/kernel": ((0, "query_in"), (1, query_heads)),
                    "gate/bias": ((0, query_heads),)})
  return weights


def _attention_rule(heads_of, head_dims_of, weights, config_sides,
                    names=_MHA_ARGUMENTS):
  return _Rule(_attention_flow(heads_of, names), weights,
               config_sides=config_sides, build=_attention_build(names),
               call_macs=_attention_macs(heads_of, head_dims_of, names),
               filters=("attention_output/kernel",))


def _register_keras_hub():
  """keras_hub's own attention layers with grouped query heads and one
  input (Gemma's): heads first in their kernels, no biases. Run at the
  first lookup of a keras_hub class (keras_hub is imported then)."""
  try:
    from keras_hub.src.models.gemma import gemma_attention  # pylint: disable=g-import-not-at-top
  except ImportError:
    return
  weights = {
      "query/kernel": ((0, "query_heads"), (1, "query_in")),
      "key/kernel": ((0, "heads"), (1, "key_in")),
      "value/kernel": ((0, "heads"), (1, "value_in")),
      "attention_output/kernel": ((0, "query_heads"), (2, "out")),
  }
  layers.add_builtin(gemma_attention.CachedGemmaAttention, _attention_rule(
      _grouped_heads, lambda l: (l.head_dim, l.head_dim), weights,
      _grouped_config, names=("x",)))
  from keras_hub.src.models.vit import vit_layers  # pylint: disable=g-import-not-at-top
  layers.add_builtin(vit_layers.ViTPatchingAndEmbedding, _Rule(
      _builtin_layers.embedding_flow, {
          "patch_embedding/kernel": ((-1, "out"),),
          "patch_embedding/bias": ((0, "out"),),
          "class_token": ((-1, "out"),),
          "position_embedding/embeddings": ((-1, "out"),)},
      layers.width_config("hidden_dim"), _patch_embedding_macs,
      filters=("patch_embedding/kernel",), data_format=True))
  from keras_hub.src.models.gemma import rms_normalization  # pylint: disable=g-import-not-at-top
  layers.add_builtin(rms_normalization.RMSNormalization, _Rule(
      layers.FIXED, approximate=_builtin_layers.norm_rule(
          ("scale",), axis_of=lambda layer: -1)))


def _patch_embedding_macs(layer, in_shape, out_shape):
  """The patch convolution: every patch's pixels to every channel."""
  return (layer.num_patches * math.prod(layer.patch_size) * in_shape[-1] *
          out_shape[-1])


# -- EinsumDense ---------------------------------------------------------------
# An EinsumDense whose equation is a Dense on the last axis ("btd,df->btf":
# the input's last axis contracted with the kernel's first, the kernel's
# last the output's last) creates channels like Dense (the MLPs of keras_hub's
# Gemma, Llama and their kin); any other equation mixes them.


def _dense_like(layer):
  """Whether an EinsumDense's equation is a Dense on the last axis."""
  try:
    inputs, output = layer.equation.replace(" ", "").split("->")
    lhs, kernel = inputs.split(",")
  except ValueError:
    return False
  return (len(kernel) == 2 and lhs and lhs[-1] == kernel[0] and
          output == lhs[:-1] + kernel[1] and kernel[0] not in output and
          kernel[1] not in lhs and (layer.bias_axes or kernel[1]) ==
          kernel[1] and "." not in inputs)


def _einsum_dense_flow(layer, call):
  if _dense_like(layer):
    return layers.producer_flow(layer, call)
  return layers.fixed_flow(layer, call)


def _einsum_dense_config(layer, config, n_in, n_out):
  del layer, n_in
  shape = config["output_shape"]
  config["output_shape"] = (n_out if isinstance(shape, int) else
                            (*tuple(shape)[:-1], n_out))
  return config


def _einsum_dense_macs(layer, in_shape, out_shape):
  if not _dense_like(layer):
    return 0
  return _dense_macs(layer, in_shape, out_shape)


def _dense_macs(layer, in_shape, out_shape):
  del layer
  return math.prod(out_shape[:-1]) * in_shape[-1] * out_shape[-1]


def register():
  """Adds the attention and EinsumDense rules (`layers.rule_for` calls it
  once, lazily)."""

  def add(classes, rule):
    for cls in classes:
      layers.add_builtin(cls, rule)

  add((_L.MultiHeadAttention,),
      _attention_rule(_mha_heads, lambda l: (l.key_dim, l.value_dim),
                      _projection_weights(), _mha_config))
  add(_classes("GroupQueryAttention"),
      _attention_rule(_grouped_heads, lambda l: (l.head_dim, l.head_dim),
                      _projection_weights("query_heads", gate=True),
                      _grouped_config))
  add((_L.EinsumDense,),
      _Rule(_einsum_dense_flow, {"kernel": ((0, "in"), (1, "out")),
                                 "bias": ((0, "out"),)},
            _einsum_dense_config, _einsum_dense_macs, filters=("kernel",)))


def _classes(*names):
  """The keras.layers classes of these names that this Keras version has."""
  return tuple(c for c in (getattr(_L, n, None) for n in names)
               if c is not None)


layers.load_builtins(register)
layers.load_builtins_for("keras_hub", _register_keras_hub)
