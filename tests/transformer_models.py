"""Small, randomly initialised transformers for the tests (testonly).

Every builder seeds with ``keras.utils.set_random_seed(0)`` and returns
``(model, inputs)``: a model made from constructor arguments (keras_hub's
never from a preset: nothing is downloaded) and a batch of two examples for
it. Heads, MLP widths and sequence lengths are small; every attention layer
has at least two heads (or key-value heads), so that a plan can remove one.
"""

import keras
import keras_hub
import numpy as np

L = keras.layers
SEQUENCE = 12
IMAGE = (32, 32, 3)


def _tokens(segments=False):
  rng = np.random.default_rng(0)
  inputs = {"token_ids": rng.integers(1, 100, (2, SEQUENCE)),
            "padding_mask": np.ones((2, SEQUENCE), "int32")}
  if segments:
    inputs["segment_ids"] = np.zeros((2, SEQUENCE), "int32")
  return inputs


def _images(shape=IMAGE):
  return np.random.default_rng(0).normal(size=(2, *shape)).astype("float32")


def encoder_block():
  """The block of keras.io's text classification example: self-attention,
  Add and LayerNormalization, a Dense -> Dense MLP."""
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 16))
  a = L.MultiHeadAttention(4, 8, name="mha")(x, x)
  h = L.LayerNormalization(name="ln1")(L.Add()([x, a]))
  f = L.Dense(64, activation="relu", name="ff1")(h)
  f = L.Dense(16, name="ff2")(f)
  h = L.LayerNormalization(name="ln2")(L.Add()([h, f]))
  y = L.Dense(3, name="head")(L.GlobalAveragePooling1D()(h))
  return keras.Model(x, y), np.random.default_rng(0).normal(
      size=(2, 6, 16)).astype("float32")


def cross_attention():
  """Queries from one sequence, keys and values from another of another
  width, an `output_shape` of its own, read by a Dense."""
  keras.utils.set_random_seed(0)
  q, kv = keras.Input((5, 16), name="q"), keras.Input((7, 12), name="kv")
  a = L.MultiHeadAttention(3, 4, output_shape=10, name="cross")(q, kv)
  y = L.Dense(2, name="head")(L.GlobalAveragePooling1D()(
      L.Dense(8, activation="relu", name="mlp")(a)))
  rng = np.random.default_rng(0)
  return keras.Model([q, kv], y), [
      rng.normal(size=(2, 5, 16)).astype("float32"),
      rng.normal(size=(2, 7, 12)).astype("float32")]


def grouped_query():
  """GroupQueryAttention: 4 query heads sharing 2 key-value heads, and a
  gated MLP of EinsumDense layers as in Llama."""
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 16))
  a = L.GroupQueryAttention(head_dim=4, num_query_heads=4,
                            num_key_value_heads=2, name="gqa")(x, x)
  h = L.Add()([x, a])
  gate = L.EinsumDense("btd,df->btf", (None, 24), name="gate")(h)
  up = L.EinsumDense("btd,df->btf", (None, 24), name="up")(h)
  f = L.EinsumDense("btf,fd->btd", (None, 16), name="down")(
      L.Multiply()([keras.ops.silu(gate), up]))
  y = L.Dense(2, name="head")(L.GlobalAveragePooling1D()(L.Add()([h, f])))
  return keras.Model(x, y), np.random.default_rng(0).normal(
      size=(2, 6, 16)).astype("float32")


def vit():
  keras.utils.set_random_seed(0)
  return keras_hub.models.ViTBackbone(
      image_shape=IMAGE, patch_size=8, num_layers=2, num_heads=2,
      hidden_dim=32, mlp_dim=64), _images()


def vit_classifier():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.ViTImageClassifier(
      backbone=vit()[0], num_classes=3, preprocessor=None)
  return model, _images()


def dinov2():
  keras.utils.set_random_seed(0)
  return keras_hub.models.DINOV2Backbone(
      patch_size=8, num_layers=2, hidden_dim=32, num_heads=2,
      intermediate_dim=64, image_shape=IMAGE), _images()


def clip_vision():
  keras.utils.set_random_seed(0)
  return keras_hub.models.CLIPVisionEncoder(
      patch_size=8, hidden_dim=32, num_layers=2, num_heads=2,
      intermediate_dim=64, image_shape=IMAGE), _images()


def mit():
  """SegFormer's encoder: its MLP widths prune (its attention is its own
  layer, kept whole)."""
  keras.utils.set_random_seed(0)
  return keras_hub.models.MiTBackbone(
      layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
      layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0,
      layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
      hidden_dims=[8, 16], image_shape=IMAGE), _images()


def bert():
  keras.utils.set_random_seed(0)
  return keras_hub.models.BertBackbone(
      vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
      intermediate_dim=64, max_sequence_length=16), _tokens(segments=True)


def bert_classifier():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.BertTextClassifier(
      backbone=bert()[0], num_classes=2, preprocessor=None)
  return model, _tokens(segments=True)


def gpt2():
  keras.utils.set_random_seed(0)
  return keras_hub.models.GPT2Backbone(
      vocabulary_size=100, num_layers=2, num_heads=2, hidden_dim=32,
      intermediate_dim=64, max_sequence_length=16), _tokens()


def gpt2_causal_lm():
  keras.utils.set_random_seed(0)
  return keras_hub.models.GPT2CausalLM(backbone=gpt2()[0],
                                       preprocessor=None), _tokens()


def gemma():
  """Gemma: grouped query heads in keras_hub's own attention layer (heads
  first in its kernels), a gated EinsumDense MLP, RMS normalisation."""
  keras.utils.set_random_seed(0)
  return keras_hub.models.GemmaBackbone(
      vocabulary_size=100, num_layers=2, num_query_heads=4,
      num_key_value_heads=2, hidden_dim=32, intermediate_dim=64,
      head_dim=16), _tokens()


TRANSFORMERS = {
    "encoder_block": encoder_block,
    "cross_attention": cross_attention,
    "grouped_query": grouped_query,
    "vit": vit,
    "vit_classifier": vit_classifier,
    "dinov2": dinov2,
    "clip_vision": clip_vision,
    "mit": mit,
    "bert": bert,
    "bert_classifier": bert_classifier,
    "gpt2": gpt2,
    "gpt2_causal_lm": gpt2_causal_lm,
    "gemma": gemma,
}
