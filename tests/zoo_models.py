"""A zoo of small models for exercising keras_epi (graph, MACs, surgeon).

`ZOO_MODELS` maps a name to a builder; `builder()` seeds Keras with
`keras.utils.set_random_seed(0)` and returns ``(model, input_shape)``, where
`input_shape` has no batch dimension (a list of shapes for multi-input
models). `random_inputs(input_shape)` makes a matching random batch.

Contents:
  * one representative of every keras.applications family in Keras 3.15
    (weights=None, classes=10, classifier_activation=None, the smallest input
    each builder accepts; Keras 3.15 has no ResNetRS and no RegNet);
  * keras.io patterns: preprocessing/augmentation inside the model, a U-Net,
    a Conv1D time-series classifier, a Conv3D volume classifier, a
    multi-input/multi-output model, shared layers, nested models with a
    (None, None, 3) input;
  * user-defined layers (`ChannelAffine`, `ConvBNAct`, `ResidualBlock`),
    registered for .keras round trips;
  * a channels_first model with a hand-computed MAC count.

Nothing is downloaded.
"""

import keras
import numpy as np

L = keras.layers
APPS = keras.applications
PACKAGE = "keras_epi_tests"


# -- user-defined layers ------------------------------------------------------


@keras.saving.register_keras_serializable(package=PACKAGE)
class ChannelAffine(keras.layers.Layer):
  """``x * scale + shift`` with per-channel weights of shape (C,)."""

  def __init__(self, scale_initializer="ones", shift_initializer="zeros",
               **kwargs):
    super().__init__(**kwargs)
    self.scale_initializer = keras.initializers.get(scale_initializer)
    self.shift_initializer = keras.initializers.get(shift_initializer)

  def build(self, input_shape):
    channels = input_shape[-1]
    self.scale = self.add_weight(name="scale", shape=(channels,),
                                 initializer=self.scale_initializer)
    self.shift = self.add_weight(name="shift", shape=(channels,),
                                 initializer=self.shift_initializer)

  def call(self, x):
    return x * self.scale + self.shift

  def get_config(self):
    config = super().get_config()
    config.update(
        scale_initializer=keras.initializers.serialize(self.scale_initializer),
        shift_initializer=keras.initializers.serialize(self.shift_initializer))
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ConvBNAct(keras.layers.Layer):
  """Conv2D -> BatchNormalization -> ReLU as one composite layer."""

  def __init__(self, filters, kernel_size=3, strides=1, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.kernel_size = kernel_size
    self.strides = strides
    self.conv = L.Conv2D(filters, kernel_size, strides=strides,
                         padding="same", use_bias=False, name="conv")
    self.bn = L.BatchNormalization(name="bn")

  def build(self, input_shape):
    self.conv.build(input_shape)
    self.bn.build(self.conv.compute_output_shape(input_shape))

  def call(self, x, training=None):
    return keras.ops.relu(self.bn(self.conv(x), training=training))

  def compute_output_shape(self, input_shape):
    return self.conv.compute_output_shape(input_shape)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, kernel_size=self.kernel_size,
                  strides=self.strides)
    return config


@keras.saving.register_keras_serializable(package=PACKAGE)
class ResidualBlock(keras.layers.Layer):
  """A basic residual block: relu(bn(conv(relu(bn(conv(x))))) + shortcut).

  The shortcut is `x` itself, or a 1x1 conv + BN projection when
  ``project=True`` (needed when `filters` differs from the input channels).
  The merge is ``keras.ops.add``, not an `Add` layer.
  """

  def __init__(self, filters, project=False, **kwargs):
    super().__init__(**kwargs)
    self.filters = filters
    self.project = project
    self.conv1 = L.Conv2D(filters, 3, padding="same", use_bias=False,
                          name="conv1")
    self.bn1 = L.BatchNormalization(name="bn1")
    self.conv2 = L.Conv2D(filters, 3, padding="same", use_bias=False,
                          name="conv2")
    self.bn2 = L.BatchNormalization(name="bn2")
    if project:
      self.proj = L.Conv2D(filters, 1, use_bias=False, name="proj")
      self.proj_bn = L.BatchNormalization(name="proj_bn")

  def build(self, input_shape):
    out_shape = (*input_shape[:-1], self.filters)
    self.conv1.build(input_shape)
    self.bn1.build(out_shape)
    self.conv2.build(out_shape)
    self.bn2.build(out_shape)
    if self.project:
      self.proj.build(input_shape)
      self.proj_bn.build(out_shape)

  def call(self, x, training=None):
    y = keras.ops.relu(self.bn1(self.conv1(x), training=training))
    y = self.bn2(self.conv2(y), training=training)
    shortcut = x
    if self.project:
      shortcut = self.proj_bn(self.proj(x), training=training)
    return keras.ops.relu(keras.ops.add(y, shortcut))

  def compute_output_shape(self, input_shape):
    return (*input_shape[:-1], self.filters)

  def get_config(self):
    config = super().get_config()
    config.update(filters=self.filters, project=self.project)
    return config


CUSTOM_OBJECTS = {"ChannelAffine": ChannelAffine, "ConvBNAct": ConvBNAct,
                  "ResidualBlock": ResidualBlock}


# -- keras.applications -------------------------------------------------------

# name: (builder, smallest accepted input shape, extra kwargs)
_APPLICATIONS = {
    "ResNet50": (APPS.ResNet50, (32, 32, 3), {}),
    "ResNet50V2": (APPS.ResNet50V2, (32, 32, 3), {}),
    "MobileNet": (APPS.MobileNet, (32, 32, 3), {}),
    "MobileNetV2": (APPS.MobileNetV2, (32, 32, 3), {}),
    # MobileNetV3 and EfficientNetV2 and ConvNeXt default to
    # include_preprocessing=True (a Rescaling / Normalization layer in the
    # graph); the defaults are kept here, as users get them.
    "MobileNetV3Small": (APPS.MobileNetV3Small, (32, 32, 3), {}),
    "MobileNetV3Large": (APPS.MobileNetV3Large, (32, 32, 3), {}),
    "VGG16": (APPS.VGG16, (32, 32, 3), {}),
    "VGG19": (APPS.VGG19, (32, 32, 3), {}),
    "DenseNet121": (APPS.DenseNet121, (32, 32, 3), {}),
    "InceptionV3": (APPS.InceptionV3, (75, 75, 3), {}),  # >= 75
    "InceptionResNetV2": (APPS.InceptionResNetV2, (75, 75, 3), {}),  # >= 75
    "Xception": (APPS.Xception, (71, 71, 3), {}),  # >= 71
    # EfficientNet (v1) always has Rescaling + Normalization inside.
    "EfficientNetB0": (APPS.EfficientNetB0, (32, 32, 3), {}),
    "EfficientNetV2B0": (APPS.EfficientNetV2B0, (32, 32, 3), {}),
    # NASNet insists on 224x224 through `input_shape`; `input_tensor` works.
    "NASNetMobile": (APPS.NASNetMobile, (32, 32, 3), {"input_tensor": True}),
    "ConvNeXtTiny": (APPS.ConvNeXtTiny, (32, 32, 3), {}),
}


def _application(name):
  builder, shape, extra = _APPLICATIONS[name]

  def build():
    keras.utils.set_random_seed(0)
    kwargs = dict(weights=None, classes=10, classifier_activation=None)
    if extra.get("input_tensor"):
      kwargs["input_tensor"] = keras.Input(shape)
    else:
      kwargs["input_shape"] = shape
    return builder(**kwargs), shape

  build.__name__ = f"build_{name}"
  return build


# -- keras.io patterns --------------------------------------------------------


def _conv_head(x, filters=(16, 32), classes=10):
  for f in filters:
    x = L.Conv2D(f, 3, strides=2, padding="same", use_bias=False)(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
  x = L.GlobalAveragePooling2D()(x)
  return L.Dense(classes)(x)


def build_augment_keras_io():
  """keras.io "Image classification from scratch", scaled down.

  A nested Sequential `data_augmentation` (RandomFlip, RandomRotation),
  Rescaling, then the small Xception-like net: separable convs, max pooling
  and 1x1 strided residual projections joined by `add`.
  """
  keras.utils.set_random_seed(0)
  shape = (32, 32, 3)
  augment = keras.Sequential(
      [L.RandomFlip("horizontal"), L.RandomRotation(0.1)],
      name="data_augmentation")
  inputs = keras.Input(shape)
  x = augment(inputs)
  x = L.Rescaling(1.0 / 255)(x)
  x = L.Conv2D(16, 3, strides=2, padding="same")(x)
  x = L.BatchNormalization()(x)
  x = L.Activation("relu")(x)
  previous = x
  for size in (32, 64):
    x = L.Activation("relu")(x)
    x = L.SeparableConv2D(size, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.SeparableConv2D(size, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    residual = L.Conv2D(size, 1, strides=2, padding="same")(previous)
    x = L.add([x, residual])
    previous = x
  x = L.SeparableConv2D(96, 3, padding="same")(x)
  x = L.BatchNormalization()(x)
  x = L.Activation("relu")(x)
  x = L.GlobalAveragePooling2D()(x)
  x = L.Dropout(0.25)(x)
  outputs = L.Dense(10)(x)
  return keras.Model(inputs, outputs, name="augment_keras_io"), shape


def augmentation_layers():
  """Every preprocessing/augmentation layer of Keras 3.15 that takes images,
  in a chain whose output is 32x32 (input 48x48, values 0..255)."""
  vr = (0.0, 1.0)
  return [
      # Keras 3.15: Equalization placed after any other layer makes
      # keras.Model(...) fail with "Tensor ... from operation 'equalization'
      # is part of a cycle"; directly on the model input it works.
      L.Equalization(value_range=(0, 255)),
      L.Resizing(40, 40),
      L.Rescaling(1.0 / 255),
      L.RandomFlip("horizontal_and_vertical"),
      L.RandomRotation(0.1),
      L.RandomZoom(0.1),
      L.RandomTranslation(0.1, 0.1),
      # Keras 3.15: RandomShear(x_factor=0.1) stores (-0.1, 0.1) in its
      # config, which from_config rejects (so clone_model and .keras loading
      # fail); a non-negative range round-trips.
      L.RandomShear(x_factor=(0.0, 0.1), y_factor=(0.0, 0.1)),
      L.RandomPerspective(),
      L.RandomElasticTransform(value_range=vr),
      L.RandomContrast(0.2, value_range=vr),
      L.RandomBrightness(0.2, value_range=vr),
      L.RandomColorJitter(value_range=vr, brightness_factor=0.2,
                          contrast_factor=0.2, saturation_factor=(0.5, 0.9),
                          hue_factor=0.1),
      L.RandomColorDegeneration(0.2, value_range=vr),
      L.RandomGrayscale(0.2),
      L.RandomHue(0.1, value_range=vr),
      L.RandomSaturation(0.2, value_range=vr),
      L.RandomSharpness(0.2, value_range=vr),
      L.RandomInvert(value_range=vr),
      L.RandomPosterization(factor=(1, 4), value_range=vr),
      L.RandomGaussianBlur(value_range=vr),
      L.RandomErasing(value_range=vr),
      L.AutoContrast(value_range=vr),
      L.Solarization(addition_factor=0.1, threshold_factor=0.5,
                     value_range=vr),
      L.AugMix(value_range=vr),
      L.RandAugment(value_range=vr),
      L.Pipeline([L.RandomFlip("horizontal"), L.RandomRotation(0.05)]),
      L.MixUp(),
      L.CutMix(),
      # Keras 3.15: under predict() RandomCrop returns its input uncropped
      # (40x40), while model(x) and the symbolic shape give 36x36; CenterCrop
      # after it makes every path 32x32.
      L.RandomCrop(36, 36),
      L.CenterCrop(32, 32),
  ]


def build_augment_all():
  """A CNN with every preprocessing and augmentation layer inside it."""
  keras.utils.set_random_seed(0)
  shape = (48, 48, 3)
  inputs = keras.Input(shape)
  x = inputs
  for layer in augmentation_layers():
    x = layer(x)
  x = L.Conv2D(8, 3, padding="same", activation="relu")(x)
  outputs = _conv_head(x)
  return keras.Model(inputs, outputs, name="augment_all"), shape


def build_unet():
  """keras.io "Image segmentation with a U-Net-like architecture", scaled
  down, plus classic Concatenate skips from the encoder."""
  keras.utils.set_random_seed(0)
  shape = (64, 64, 3)
  inputs = keras.Input(shape)
  x = L.Conv2D(8, 3, strides=2, padding="same")(inputs)
  x = L.BatchNormalization()(x)
  x = L.Activation("relu")(x)
  previous = x
  skips = []
  for filters in (16, 32, 64):
    skips.append(x)
    x = L.Activation("relu")(x)
    x = L.SeparableConv2D(filters, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.SeparableConv2D(filters, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.MaxPooling2D(3, strides=2, padding="same")(x)
    residual = L.Conv2D(filters, 1, strides=2, padding="same")(previous)
    x = L.add([x, residual])
    previous = x
  for filters in (64, 32, 16, 8):
    x = L.Activation("relu")(x)
    x = L.Conv2DTranspose(filters, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.Activation("relu")(x)
    x = L.Conv2DTranspose(filters, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.UpSampling2D(2)(x)
    residual = L.UpSampling2D(2)(previous)
    residual = L.Conv2D(filters, 1, padding="same")(residual)
    x = L.add([x, residual])
    if skips:
      skip = skips.pop()
      if skip.shape[1] == x.shape[1]:
        x = L.Concatenate()([x, skip])
    previous = x
  outputs = L.Conv2D(3, 3, activation="softmax", padding="same")(x)
  return keras.Model(inputs, outputs, name="unet"), shape


def build_timeseries_conv1d():
  """keras.io "Timeseries classification from scratch" (FordA), scaled down."""
  keras.utils.set_random_seed(0)
  shape = (128, 1)
  inputs = keras.Input(shape)
  x = inputs
  for _ in range(3):
    x = L.Conv1D(16, 3, padding="same")(x)
    x = L.BatchNormalization()(x)
    x = L.ReLU()(x)
  x = L.GlobalAveragePooling1D()(x)
  outputs = L.Dense(2)(x)
  return keras.Model(inputs, outputs, name="timeseries_conv1d"), shape


def build_volume_conv3d():
  """keras.io "3D image classification from CT scans", scaled down."""
  keras.utils.set_random_seed(0)
  shape = (8, 32, 32, 1)
  inputs = keras.Input(shape)
  x = L.Conv3D(8, 3, activation="relu")(inputs)
  x = L.MaxPool3D(2)(x)
  x = L.BatchNormalization()(x)
  x = L.Conv3D(16, 3, activation="relu", padding="same")(x)
  x = L.MaxPool3D((1, 2, 2))(x)
  x = L.BatchNormalization()(x)
  x = L.GlobalAveragePooling3D()(x)
  x = L.Dense(32, activation="relu")(x)
  x = L.Dropout(0.3)(x)
  outputs = L.Dense(1)(x)
  return keras.Model(inputs, outputs, name="volume_conv3d"), shape


def build_multi_io():
  """Two inputs (image, metadata), three outputs (class, score, mask)."""
  keras.utils.set_random_seed(0)
  image = keras.Input((32, 32, 3), name="image")
  meta = keras.Input((8,), name="meta")
  x = L.Conv2D(16, 3, padding="same", activation="relu")(image)
  x = L.Conv2D(32, 3, strides=2, padding="same", activation="relu")(x)
  mask = L.Conv2D(4, 1, name="mask")(x)
  f = L.GlobalAveragePooling2D()(x)
  m = L.Dense(16, activation="relu")(meta)
  h = L.Concatenate()([f, m])
  h = L.Dense(32, activation="relu")(h)
  cls = L.Dense(10, name="cls")(h)
  score = L.Dense(1, name="score")(h)
  model = keras.Model([image, meta], [cls, score, mask], name="multi_io")
  return model, [(32, 32, 3), (8,)]


def build_shared_conv():
  """A siamese conv shared by two inputs, and a conv called twice in series
  (its input and output channels are tied)."""
  keras.utils.set_random_seed(0)
  a = keras.Input((32, 32, 3), name="a")
  b = keras.Input((32, 32, 3), name="b")
  stem = L.Conv2D(16, 3, padding="same", activation="relu", name="shared_stem")
  twice = L.Conv2D(16, 3, padding="same", activation="relu", name="twice")
  ha = twice(twice(stem(a)))
  hb = stem(b)
  h = L.Concatenate()([L.subtract([ha, hb]), hb])
  h = L.Conv2D(32, 3, strides=2, padding="same", activation="relu")(h)
  h = L.GlobalAveragePooling2D()(h)
  outputs = L.Dense(10)(h)
  return keras.Model([a, b], outputs, name="shared_conv"), [(32, 32, 3),
                                                            (32, 32, 3)]


def build_nested_dynamic_functional():
  """An inner functional backbone with input (None, None, 3), called on a
  fixed 32x32 outer input."""
  keras.utils.set_random_seed(0)
  inner_in = keras.Input((None, None, 3))
  h = L.Conv2D(8, 3, padding="same", use_bias=False)(inner_in)
  h = L.BatchNormalization()(h)
  h = L.ReLU()(h)
  h = L.Conv2D(16, 3, strides=2, padding="same")(h)
  backbone = keras.Model(inner_in, h, name="backbone")
  inputs = keras.Input((32, 32, 3))
  x = backbone(inputs)
  x = L.Conv2D(16, 1, activation="relu")(x)
  x = L.GlobalAveragePooling2D()(x)
  outputs = L.Dense(10)(x)
  return keras.Model(inputs, outputs, name="nested_dynamic_functional"), (
      32, 32, 3)


def build_nested_dynamic_sequential():
  """An inner Sequential with Input((None, None, 3)) in a fixed-size model."""
  keras.utils.set_random_seed(0)
  backbone = keras.Sequential([
      keras.Input((None, None, 3)),
      L.Conv2D(8, 3, padding="same", use_bias=False),
      L.BatchNormalization(),
      L.ReLU(),
      L.Conv2D(16, 3, strides=2, padding="same", activation="relu"),
  ], name="backbone_seq")
  inputs = keras.Input((32, 32, 3))
  x = backbone(inputs)
  x = L.Conv2D(16, 3, padding="same", activation="relu")(x)
  x = L.GlobalAveragePooling2D()(x)
  outputs = L.Dense(10)(x)
  return keras.Model(inputs, outputs, name="nested_dynamic_sequential"), (
      32, 32, 3)


# -- user-defined layers in models -------------------------------------------


def _randomize(layer, rng):
  layer.set_weights([rng.uniform(0.5, 1.5, w.shape).astype("float32")
                     if i == 0 else
                     rng.normal(0, 0.1, w.shape).astype("float32")
                     for i, w in enumerate(layer.get_weights())])


def build_custom_channel_affine():
  keras.utils.set_random_seed(0)
  rng = np.random.default_rng(0)
  inputs = keras.Input((32, 32, 3))
  x = L.Conv2D(16, 3, padding="same")(inputs)
  a1 = ChannelAffine(name="affine1")
  x = L.ReLU()(a1(x))
  x = L.Conv2D(32, 3, strides=2, padding="same")(x)
  a2 = ChannelAffine(name="affine2")
  x = a2(x)
  x = L.GlobalAveragePooling2D()(x)
  outputs = L.Dense(10)(x)
  model = keras.Model(inputs, outputs, name="custom_channel_affine")
  _randomize(a1, rng)
  _randomize(a2, rng)
  return model, (32, 32, 3)


def build_custom_conv_bn_act():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((32, 32, 3))
  x = ConvBNAct(16, name="cba1")(inputs)
  x = ConvBNAct(32, strides=2, name="cba2")(x)
  x = L.Conv2D(32, 3, padding="same", activation="relu")(x)
  x = L.GlobalAveragePooling2D()(x)
  outputs = L.Dense(10)(x)
  return keras.Model(inputs, outputs, name="custom_conv_bn_act"), (32, 32, 3)


def build_custom_residual():
  keras.utils.set_random_seed(0)
  inputs = keras.Input((32, 32, 3))
  x = L.Conv2D(16, 3, padding="same", activation="relu")(inputs)
  x = ResidualBlock(16, name="res1")(x)
  x = ResidualBlock(32, project=True, name="res2")(x)
  x = L.GlobalAveragePooling2D()(x)
  outputs = L.Dense(10)(x)
  return keras.Model(inputs, outputs, name="custom_residual"), (32, 32, 3)


# -- channels_first -----------------------------------------------------------

# True MACs for one example (conv: out_positions * k*k * c_in * c_out;
# Dense: in * out; biases, activations and pooling not counted):
#   conv1: input (3, 16, 16), 8 filters 3x3, same       -> (8, 16, 16)
#          16*16 * 9 * 3 * 8   =  55,296
#   conv2: input (8, 16, 16), 16 filters 3x3, stride 2  -> (16, 8, 8)
#          8*8 * 9 * 8 * 16    =  73,728
#   GlobalAveragePooling2D(channels_first)              -> (16,)
#   dense: 16 * 10             =     160
#   total                      = 129,184
CHANNELS_FIRST_MACS = 129_184


def build_channels_first():
  keras.utils.set_random_seed(0)
  shape = (3, 16, 16)
  inputs = keras.Input(shape)
  x = L.Conv2D(8, 3, padding="same", data_format="channels_first",
               name="conv1")(inputs)
  x = L.BatchNormalization(axis=1)(x)
  x = L.ReLU()(x)
  x = L.Conv2D(16, 3, strides=2, padding="same",
               data_format="channels_first", name="conv2")(x)
  x = L.GlobalAveragePooling2D(data_format="channels_first")(x)
  outputs = L.Dense(10, name="dense")(x)
  return keras.Model(inputs, outputs, name="channels_first"), shape


# -- the zoo -----------------------------------------------------------------

ZOO_MODELS = {name: _application(name) for name in _APPLICATIONS}
ZOO_MODELS.update({
    "augment_keras_io": build_augment_keras_io,
    "augment_all": build_augment_all,
    "unet": build_unet,
    "timeseries_conv1d": build_timeseries_conv1d,
    "volume_conv3d": build_volume_conv3d,
    "multi_io": build_multi_io,
    "shared_conv": build_shared_conv,
    "nested_dynamic_functional": build_nested_dynamic_functional,
    "nested_dynamic_sequential": build_nested_dynamic_sequential,
    "custom_channel_affine": build_custom_channel_affine,
    "custom_conv_bn_act": build_custom_conv_bn_act,
    "custom_residual": build_custom_residual,
    "channels_first": build_channels_first,
})


def random_inputs(input_shape, batch=2, seed=1):
  """A random batch for `input_shape` (a shape or a list of shapes); values
  0..255, the range keras.applications' preprocessing expects."""
  rng = np.random.default_rng(seed)
  if isinstance(input_shape, list):
    return [rng.uniform(0, 255, (batch, *s)).astype("float32")
            for s in input_shape]
  return rng.uniform(0, 255, (batch, *input_shape)).astype("float32")
