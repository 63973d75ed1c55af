"""The output-equivalence oracle for the surgeon, shared by the tests.

Independently of the library's slicing code, it makes a random subset of each
group's channels exactly zero at every member layer's output (producer kernels
and biases, BatchNormalization gamma, beta and moving mean, depthwise
kernels). A model whose removed channels are exactly zero computes the same
function as the model with those channels physically removed, as long as the
operations between producers and consumers map 0 to 0 (ReLU, swish, pooling,
padding, products with coupled channels...), which is true of the models the
tests use.
"""

import keras
import numpy as np

import keras_epi

L = keras.layers


def resolve(model, path):  # independent of keras_epi.graph.layer_at on purpose
  """The layer at a ``"nested/layer"`` path (through composite layers'
  tracked sublayers), or None for a layer a composite layer's `call` makes
  anew each time (it has no weights)."""
  layer = model
  for name in path.split("/"):
    if isinstance(layer, keras.Model):
      layer = layer.get_layer(name)
    else:
      layer = next((l for l in layer._layers if l.name == name), None)  # pylint: disable=protected-access
      if layer is None:
        return None
  return layer


def random_keep(groups, rng, fraction=0.5):
  """Random channels to keep per group: at least one, at most size - 1."""
  keep = {}
  for g in groups:
    if g.size < 2:
      continue
    n = int(np.clip(round(g.size * fraction), 1, g.size - 1))
    keep[g.name] = np.sort(rng.choice(g.size, size=n, replace=False))
  return keep


def zero_channels(model, groups, keep):
  """Sets the removed channels of every member layer's output to exactly 0."""
  for g in groups:
    if g.name not in keep:
      continue
    removed = np.setdiff1d(np.arange(g.size), keep[g.name])
    for path, positions in g.members:
      path, _, side = path.partition(":")
      layer = resolve(model, path)
      pos = positions[removed].ravel()
      pos = pos[pos >= 0]  # -1: a channel this layer does not carry
      if layer is not None and pos.size and side == "heads":
        _zero_heads(layer, pos)
      elif layer is not None and pos.size and not side:
        _zero_outputs(layer, pos)


def _zero_outputs(layer, pos):
  weights = {w.name: w for w in layer.weights}
  arrays = {k: keras.ops.convert_to_numpy(v) for k, v in weights.items()}
  if isinstance(layer, (L.Conv1DTranspose, L.Conv2DTranspose,
                        L.Conv3DTranspose)):
    arrays["kernel"][..., pos, :] = 0
  elif isinstance(layer, (L.DepthwiseConv1D, L.DepthwiseConv2D)):
    m = layer.depth_multiplier
    arrays["kernel"][..., pos // m, pos % m] = 0
  elif isinstance(layer, (L.SeparableConv1D, L.SeparableConv2D)):
    arrays["pointwise_kernel"][..., pos] = 0
  elif isinstance(layer, (L.Conv1D, L.Conv2D, L.Conv3D, L.Dense)):
    arrays["kernel"][..., pos] = 0
  elif isinstance(layer, L.BatchNormalization):
    for name in ("gamma", "beta", "moving_mean"):
      if name in arrays:
        arrays[name][pos] = 0
  elif not isinstance(layer, (L.PReLU, L.LayerNormalization)):
    # Another per-channel layer (LayerScale, a user's scale and shift):
    # zero its weights that run along the channel (last) axis.
    for value in arrays.values():
      if value.ndim and value.shape[-1] > pos.max():
        value[..., pos] = 0
  if "bias" in arrays and arrays["bias"].ndim and \
      not isinstance(layer, L.BatchNormalization):
    arrays["bias"][pos] = 0
  for name, value in arrays.items():
    weights[name].assign(value)


def _zero_heads(layer, heads):
  """Zeroes the value projection of attention heads (MultiHeadAttention's;
  GroupQueryAttention's key-value heads, which their query heads share):
  their share of the output is then exactly zero, whatever they attend
  to."""
  value = next(l for l in layer._layers if l.name == "value")  # pylint: disable=protected-access
  kernel = keras.ops.convert_to_numpy(value.kernel)
  if type(layer).__name__ == "CachedGemmaAttention":
    kernel[heads] = 0  # (heads, model width, head size)
  else:
    kernel[:, heads] = 0  # (model width, heads, head size)
  value.kernel.assign(kernel)
  if getattr(value, "bias", None) is not None:
    bias = keras.ops.convert_to_numpy(value.bias)
    bias[heads] = 0
    value.bias.assign(bias)


def copy_model(model):
  """A functional copy with its own weights (the caller's model is kept)."""
  clone = keras.models.clone_model(model)
  clone.set_weights(model.get_weights())
  return clone


def relative_error(a, b):
  """Relative L2 error of `a` against `b` (nested outputs concatenated)."""
  a = np.concatenate([np.ravel(keras.ops.convert_to_numpy(v))
                      for v in keras.tree.flatten(a)])
  b = np.concatenate([np.ravel(keras.ops.convert_to_numpy(v))
                      for v in keras.tree.flatten(b)])
  a, b = a.astype(np.float64), b.astype(np.float64)
  return np.linalg.norm(a - b) / max(np.linalg.norm(b), 1e-12)


def check_equivalence(model, x, seed=0, fraction=0.5, ignore=(), copy=True):
  """Runs the oracle; returns (zeroed model, pruned model, keep, error).

  With ``copy=False`` the channels are zeroed in `model` itself (for models
  that `clone_model` cannot copy, such as keras_hub's)."""
  groups = keras_epi.channel_groups(model, ignore=ignore)
  keep = random_keep(groups, np.random.default_rng(seed), fraction)
  zeroed = copy_model(model) if copy else model
  zero_channels(zeroed, groups, keep)
  pruned = keras_epi.prune_model(zeroed, keep, ignore=ignore)
  # Called, not `predict`: keras_hub tasks decode their outputs in
  # `predict_step`, which the plain pruned model does not.
  error = relative_error(pruned(x, training=False), zeroed(x, training=False))
  return zeroed, pruned, keep, error


def randomize_statistics(model, seed=0):
  """Non-trivial BatchNormalization statistics and biases (fresh models have
  gamma=1, beta=0, mean=0, var=1 and zero biases, which hide slicing bugs)."""
  rng = np.random.default_rng(seed)
  for w in model.weights:
    shape = tuple(w.shape)
    name = w.name
    if name in ("gamma", "moving_variance") or (
        "layer_scale" in w.path and len(shape) == 1):
      w.assign(rng.uniform(0.5, 1.5, shape).astype(w.dtype))
    elif name in ("beta", "moving_mean", "bias") and shape:
      w.assign(rng.normal(0.0, 0.1, shape).astype(w.dtype))
    elif name == "bias":  # a scalar shift would move the zeroed channels
      w.assign(np.zeros(shape, w.dtype))
