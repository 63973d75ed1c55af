"""Tests of keras_epi.export: fold_batchnorm (same inference outputs, fewer
layers) and export_tflite (the interpreter's outputs against the model's)."""

import os

import keras
import numpy as np
import pytest
import tensorflow as tf

import keras_epi
from keras_epi import export
from tests import oracle

L = keras.layers


def _bn():
  return L.BatchNormalization(name="bn")


def _model(producer, shape, after=None, bn=_bn):
  keras.utils.set_random_seed(0)
  x = keras.Input(shape)
  y = bn()(producer()(x))
  if after is not None:
    y = after(y)
  model = keras.Model(x, y)
  oracle.randomize_statistics(model)
  return model


def _check_same_function(model, folded, batch=3, tolerance=1e-5):
  x = np.random.default_rng(1).normal(
      size=(batch, *model.input_shape[1:])).astype("float32")
  want = keras.ops.convert_to_numpy(model(x, training=False))
  got = keras.ops.convert_to_numpy(folded(x, training=False))
  assert oracle.relative_error(got, want) <= tolerance


# Each producer followed by a BatchNormalization over its output channels.
FOLDABLE = {
    "conv1d": (lambda: L.Conv1D(6, 3, name="p"), (9, 3)),
    "conv2d": (lambda: L.Conv2D(6, 3, name="p"), (7, 7, 3)),
    "conv2d_no_bias": (lambda: L.Conv2D(6, 3, use_bias=False, name="p"),
                       (7, 7, 3)),
    "conv2d_groups": (lambda: L.Conv2D(6, 3, groups=3, name="p"), (7, 7, 3)),
    "conv3d": (lambda: L.Conv3D(6, 2, name="p"), (4, 4, 4, 3)),
    "conv2d_transpose": (lambda: L.Conv2DTranspose(6, 3, name="p"),
                         (5, 5, 3)),
    "depthwise": (lambda: L.DepthwiseConv2D(3, depth_multiplier=2,
                                            use_bias=False, name="p"),
                  (7, 7, 3)),
    "separable": (lambda: L.SeparableConv2D(6, 3, depth_multiplier=2,
                                            name="p"), (7, 7, 3)),
    "dense": (lambda: L.Dense(6, name="p"), (5,)),
    "dense_on_4d": (lambda: L.Dense(6, name="p"), (3, 3, 4)),
}


@pytest.mark.parametrize("name", sorted(FOLDABLE))
def test_folds_each_producer_type(name):
  producer, shape = FOLDABLE[name]
  model = _model(producer, shape)
  before = [w.copy() for w in model.get_weights()]
  folded = keras_epi.fold_batchnorm(model)
  assert folded.folded_batchnorms == ["bn"]
  assert isinstance(folded.get_layer("bn"), L.Identity)
  assert folded.get_layer("p").use_bias
  _check_same_function(model, folded)
  for a, b in zip(before, model.get_weights()):  # the caller's model is kept
    np.testing.assert_array_equal(a, b)


def test_folds_scale_and_center_off():
  model = _model(lambda: L.Conv2D(4, 1, name="p"), (3, 3, 2),
                 bn=lambda: L.BatchNormalization(scale=False, center=False,
                                                 name="bn"))
  folded = keras_epi.fold_batchnorm(model)
  assert folded.folded_batchnorms == ["bn"]
  _check_same_function(model, folded)


def test_leaves_channels_first():
  # TensorFlow's CPU kernels cannot run NCHW convolutions, so this model is
  # only built, not called; folding it is simply not attempted.
  x = keras.Input((3, 6, 6))
  y = L.Conv2D(4, 3, data_format="channels_first", name="p")(x)
  model = keras.Model(x, L.BatchNormalization(axis=1, name="bn")(y))
  folded = keras_epi.fold_batchnorm(model)
  assert not folded.folded_batchnorms
  assert isinstance(folded.get_layer("bn"), L.BatchNormalization)


NOT_FOLDABLE = {
    # The conv's activation sits between it and the normalisation.
    "activation": (lambda: L.Conv2D(4, 3, activation="relu", name="p"),
                   lambda: L.BatchNormalization(name="bn")),
    # The normalisation is over a spatial axis, not the channels.
    "other_axis": (lambda: L.Conv2D(4, 3, name="p"),
                   lambda: L.BatchNormalization(axis=1, name="bn")),
    # No producer: a pooling layer feeds the normalisation.
    "no_producer": (lambda: L.MaxPooling2D(name="p"),
                    lambda: L.BatchNormalization(name="bn")),
}


@pytest.mark.parametrize("name", sorted(NOT_FOLDABLE))
def test_leaves_unfoldable_batchnorm(name):
  producer, bn = NOT_FOLDABLE[name]
  model = _model(producer, (6, 6, 3), bn=bn)
  folded = keras_epi.fold_batchnorm(model)
  assert not folded.folded_batchnorms
  assert isinstance(folded.get_layer("bn"), L.BatchNormalization)
  _check_same_function(model, folded)


def test_leaves_batchnorm_whose_input_is_read_twice():
  keras.utils.set_random_seed(0)
  x = keras.Input((6, 6, 3))
  c = L.Conv2D(4, 3, name="p")(x)
  y = L.Add()([L.BatchNormalization(name="bn")(c), c])
  model = keras.Model(x, y)
  oracle.randomize_statistics(model)
  folded = keras_epi.fold_batchnorm(model)
  assert not folded.folded_batchnorms
  _check_same_function(model, folded)


def test_nested_and_sequential_models():
  keras.utils.set_random_seed(0)
  inner = keras.Sequential([keras.Input((6, 6, 4)),
                            L.DepthwiseConv2D(3, padding="same", name="dw"),
                            L.BatchNormalization(name="bn"), L.ReLU(6.0)],
                           name="inner")
  x = keras.Input((8, 8, 3))
  y = L.BatchNormalization(name="bn0")(L.Conv2D(4, 3, name="c0")(x))
  y = inner(y)
  y = L.GlobalAveragePooling2D()(y)
  model = keras.Model(x, L.Dense(5, name="logits")(y))
  oracle.randomize_statistics(model)
  folded = keras_epi.fold_batchnorm(model)
  assert sorted(folded.folded_batchnorms) == ["bn0", "inner/bn"]
  assert isinstance(folded.get_layer("inner"), keras.Sequential)
  _check_same_function(model, folded)
  # No shared variables: changing the copy leaves the original alone.
  folded.get_layer("inner").get_layer("dw").kernel.assign(
      np.zeros(folded.get_layer("inner").get_layer("dw").kernel.shape))
  assert np.abs(keras.ops.convert_to_numpy(
      inner.get_layer("dw").kernel)).sum() > 0


def test_keras_round_trip(tmp_path):
  model = _model(lambda: L.Conv2D(6, 3, name="p"), (7, 7, 3),
                 after=L.ReLU(6.0))
  folded = keras_epi.fold_batchnorm(model)
  path = str(tmp_path / "folded.keras")
  folded.save(path)
  loaded = keras.saving.load_model(path)
  _check_same_function(folded, loaded, tolerance=0)


@pytest.mark.parametrize("builder", ["MobileNetV2", "ResNet50"])
def test_applications_fold_and_prune(builder):
  """Every BatchNormalization of these models follows a conv: all fold, the
  outputs are unchanged, and folding a pruned model works the same."""
  keras.utils.set_random_seed(0)
  model = getattr(keras.applications, builder)(
      weights=None, input_shape=(32, 32, 3), classes=10,
      classifier_activation=None)
  oracle.randomize_statistics(model)
  n_bn = sum(isinstance(l, L.BatchNormalization) for l in model.layers)
  folded = keras_epi.fold_batchnorm(model)
  assert len(folded.folded_batchnorms) == n_bn
  _check_same_function(model, folded, batch=2, tolerance=1e-4)
  groups = keras_epi.channel_groups(model)
  keep = oracle.random_keep(groups, np.random.default_rng(0))
  pruned = keras_epi.prune_model(model, keep)
  _check_same_function(pruned, keras_epi.fold_batchnorm(pruned), batch=2,
                       tolerance=1e-4)


def test_rejects_a_non_model():
  with pytest.raises(ValueError, match="Expected a keras.Model"):
    keras_epi.fold_batchnorm(L.Dense(3))


# --- export_tflite ----------------------------------------------------------

def _interpret(path, inputs):
  """Runs the .tflite file's one signature on `inputs` {name: array}, with
  TensorFlow's interpreter, independently of keras_epi."""
  import warnings  # pylint: disable=g-import-not-at-top
  with warnings.catch_warnings():
    warnings.simplefilter("ignore")
    interpreter = tf.lite.Interpreter(model_path=str(path))
  return interpreter.get_signature_runner("serving_default")(**inputs)


def _residual_cnn():
  """A small seeded CNN: BN after every conv, a residual add, a stride-2
  stage, with moving statistics that are not the identity."""
  keras.utils.set_random_seed(0)
  x = keras.Input((12, 12, 3), name="images")
  y = L.ReLU()(L.BatchNormalization()(L.Conv2D(32, 3, padding="same",
                                                use_bias=False)(x)))
  z = L.BatchNormalization()(L.Conv2D(32, 3, padding="same",
                                      use_bias=False)(y))
  y = L.ReLU()(L.Add()([y, z]))
  y = L.ReLU()(L.BatchNormalization()(L.Conv2D(64, 3, strides=2,
                                               padding="same")(y)))
  y = L.Dense(10, name="logits")(L.GlobalAveragePooling2D()(y))
  model = keras.Model(x, y)
  oracle.randomize_statistics(model)
  return model


def _pruned_cnn():
  model = _residual_cnn()
  keep = oracle.random_keep(keras_epi.channel_groups(model),
                            np.random.default_rng(0))
  return keras_epi.prune_model(model, keep)


_CNNS = {"dense": _residual_cnn, "pruned": _pruned_cnn}


def _images(n, seed=1, shape=(12, 12, 3)):
  return np.random.default_rng(seed).normal(size=(n, *shape)).astype(
      "float32")


@pytest.fixture(scope="module")
def tflite_files(tmp_path_factory):
  """{(cnn, quantize): (model, path, returned error)} for the dense and the
  pruned CNN, float32 and dynamic-range quantised, converted once."""
  directory = tmp_path_factory.mktemp("tflite")
  files = {}
  for name, build in _CNNS.items():
    model = build()
    for quantize in (None, "dynamic"):
      path = directory / f"{name}_{quantize}.tflite"
      error = keras_epi.export_tflite(model, path, quantize=quantize,
                                      check_data=_images(4))
      files[name, quantize] = model, path, error
  return files


@pytest.mark.parametrize("quantize", [None, "dynamic"])
@pytest.mark.parametrize("name", sorted(_CNNS))
def test_tflite_matches_the_keras_model_at_two_batch_sizes(
    tflite_files, name, quantize):
  model, path, error = tflite_files[name, quantize]
  for n in (1, 5):  # the file has a dynamic batch dimension
    x = _images(n, seed=n + 10)
    want = keras.ops.convert_to_numpy(model(x, training=False))
    got = _interpret(path, {"images": x})["output_0"]
    assert got.shape == want.shape == (n, 10)
    scale = np.max(np.abs(want))
    if quantize is None:
      np.testing.assert_allclose(got, want, rtol=0, atol=1e-5 * scale)
    else:  # int8 weights: close, but not float-close
      assert 1e-6 * scale < np.max(np.abs(got - want)) < 0.05 * scale
  # The returned difference is the one measured on check_data.
  x = _images(4)
  want = keras.ops.convert_to_numpy(model(x, training=False))
  measured = np.max(np.abs(_interpret(path, {"images": x})["output_0"] - want))
  assert error == pytest.approx(float(measured), rel=1e-3, abs=1e-7)


def test_tflite_sizes_follow_pruning_and_quantisation(tflite_files):
  size = {key: os.path.getsize(path)
          for key, (_, path, _) in tflite_files.items()}
  params = {name: tflite_files[name, None][0].count_params()
            for name in _CNNS}
  for name in _CNNS:  # float32: about 4 bytes a parameter, plus the graph
    assert 4 * params[name] < size[name, None] < 4 * params[name] + 16_000
    assert size[name, "dynamic"] < 0.6 * size[name, None]
  assert params["pruned"] < 0.5 * params["dense"]
  assert size["pruned", None] < 0.5 * size["dense", None]


def test_tflite_float16_and_int8(tmp_path):
  model = _residual_cnn()
  x = _images(4)
  scale = np.max(np.abs(keras.ops.convert_to_numpy(model(x, training=False))))
  float32 = keras_epi.export_tflite(model, tmp_path / "f32.tflite",
                                    check_data=x)
  half = keras_epi.export_tflite(model, tmp_path / "f16.tflite",
                                 quantize="float16", check_data=x)
  int8 = keras_epi.export_tflite(model, tmp_path / "int8.tflite",
                                 quantize="int8",
                                 representative_data=_images(16, seed=3),
                                 check_data=x)
  assert float32 < 1e-5 * scale
  assert float32 < half < 1e-2 * scale
  assert 0 < int8 < 0.1 * scale
  size = {n: os.path.getsize(tmp_path / f"{n}.tflite")
          for n in ("f32", "f16", "int8")}
  assert size["int8"] < size["f16"] < 0.6 * size["f32"]


def test_tflite_several_inputs_and_outputs(tmp_path):
  keras.utils.set_random_seed(0)
  image = keras.Input((6, 6, 2), name="image")
  aux = keras.Input((3,), name="aux")
  y = L.BatchNormalization()(L.Conv2D(4, 3)(image))
  y = L.Concatenate()([L.GlobalAveragePooling2D()(y), aux])
  model = keras.Model([image, aux], [L.Dense(2, name="a")(y),
                                     L.Dense(5, name="b")(y)])
  oracle.randomize_statistics(model)
  x = [_images(3, shape=(6, 6, 2)), _images(3, seed=2, shape=(3,))]
  error = keras_epi.export_tflite(model, tmp_path / "m.tflite", check_data=x)
  assert error < 1e-5
  got = _interpret(tmp_path / "m.tflite", {"image": x[0], "aux": x[1]})
  want = model(x, training=False)
  for i, expected in enumerate(want):
    np.testing.assert_allclose(got[f"output_{i}"],
                               keras.ops.convert_to_numpy(expected),
                               atol=1e-5)


def test_tflite_without_folding_keeps_the_callers_model(tmp_path):
  model = _residual_cnn()
  before = [w.copy() for w in model.get_weights()]
  error = keras_epi.export_tflite(model, tmp_path / "sub" / "m.tflite",
                                  fold_batchnorm=False, check_data=_images(2))
  assert error < 1e-5 and os.path.exists(tmp_path / "sub" / "m.tflite")
  for a, b in zip(before, model.get_weights()):
    np.testing.assert_array_equal(a, b)
  assert sum(isinstance(l, L.BatchNormalization) for l in model.layers) == 3


def _converted(model, directory):
  """The flatbuffer keras_epi.export_tflite writes for `model`."""
  path = os.path.join(directory, "converted.tflite")
  keras_epi.export_tflite(model, path, fold_batchnorm=False)
  with open(path, "rb") as f:
    return f.read()


def _perturbed(model, value):
  """A copy of `model` whose classifier kernel is all `value` added."""
  copy = oracle.copy_model(model)
  kernel = copy.get_layer("logits").kernel
  kernel.assign(keras.ops.convert_to_numpy(kernel) + value)
  return copy


def test_tflite_check_fails_when_the_flatbuffer_computes_something_else(
    tmp_path, monkeypatch):
  model = _residual_cnn()
  wrong = _converted(_perturbed(model, 0.1), tmp_path)
  monkeypatch.setattr(export, "_convert", lambda *args: wrong)
  path = tmp_path / "m.tflite"
  with pytest.raises(RuntimeError, match="output_0 at batch size 4 .*"
                     "differs from the Keras model"):
    keras_epi.export_tflite(model, path, check_data=_images(4))
  assert not path.exists()  # nothing written when the check fails
  # A quantised model is measured, not judged: the same difference returns.
  error = keras_epi.export_tflite(model, path, quantize="dynamic",
                                  check_data=_images(4))
  assert error > 0.01 and path.exists()
  # Loose enough tolerances accept it as a float model too.
  assert keras_epi.export_tflite(model, path, check_data=_images(4),
                                 atol=10.0) == pytest.approx(error)


def test_tflite_check_fails_on_non_finite_outputs_even_quantised(
    tmp_path, monkeypatch):
  # What the from_concrete_functions route gives for a Keras 3 model.
  model = _residual_cnn()
  wrong = _converted(_perturbed(model, np.nan), tmp_path)
  monkeypatch.setattr(export, "_convert", lambda *args: wrong)
  for quantize in (None, "dynamic"):
    with pytest.raises(RuntimeError, match="not finite"):
      keras_epi.export_tflite(model, tmp_path / "m.tflite",
                              quantize=quantize, check_data=_images(2))
  assert not (tmp_path / "m.tflite").exists()


def test_tflite_without_check_data_returns_none(tmp_path):
  assert keras_epi.export_tflite(_residual_cnn(), tmp_path / "m.tflite") is None
  x = _images(3)
  got = _interpret(tmp_path / "m.tflite", {"images": x})["output_0"]
  np.testing.assert_allclose(
      got, keras.ops.convert_to_numpy(_residual_cnn()(x, training=False)),
      atol=1e-5)


class _Subclassed(keras.Model):

  def call(self, x):
    return x


@pytest.mark.parametrize("kwargs, message", [
    (dict(model=L.Dense(3)), "`model` must be a keras.Model, got Dense"),
    (dict(model=_Subclassed()), "`model` .* has no defined inputs"),
    (dict(path=""), "`path` must name a file"),
    (dict(path=3), "`path` must name a file"),
    (dict(quantize="int4"), "`quantize` must be one of .* got 'int4'"),
    (dict(quantize="int8"), "`representative_data` is needed"),
    (dict(representative_data=np.zeros((1, 4))),
     "`representative_data` is needed with quantize='int8' and used only"),
    (dict(quantize="int8", representative_data=np.zeros((2, 5))),
     r"`representative_data` must be a non-empty batch of shape "
     r"\(None, 4\), got an array of shape \(2, 5\)"),
    (dict(fold_batchnorm="yes"), "`fold_batchnorm` must be a bool"),
    (dict(atol=-1.0), "`atol` must be a finite number >= 0, got -1.0"),
    (dict(rtol=float("nan")), "`rtol` must be a finite number >= 0"),
    (dict(atol=True), "`atol` must be a finite number"),
    (dict(check_data=np.zeros((2, 3))), r"`check_data` must be a non-empty "
     r"batch of shape \(None, 4\), got an array of shape \(2, 3\)"),
    (dict(check_data=np.zeros((0, 4))), "`check_data` must be a non-empty"),
    (dict(check_data=[np.zeros((2, 4))] * 2),
     r"`check_data` must hold 1 array\(s\), one per model input, got 2"),
])
def test_tflite_rejects_bad_arguments(kwargs, message, tmp_path):
  x = keras.Input((4,))
  args = dict(model=keras.Model(x, L.Dense(2)(x)),
              path=str(tmp_path / "m.tflite"))
  args.update(kwargs)
  with pytest.raises(ValueError, match=message):
    keras_epi.export_tflite(args.pop("model"), args.pop("path"), **args)
  assert not (tmp_path / "m.tflite").exists()


def test_tflite_rejects_a_directory_as_path(tmp_path):
  x = keras.Input((4,))
  with pytest.raises(ValueError, match="`path` must name a file"):
    keras_epi.export_tflite(keras.Model(x, L.Dense(2)(x)), tmp_path)
