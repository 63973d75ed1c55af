"""Models as users have them, which keras_epi's own zoo does not build:
keras.io examples with open input sizes, layers whose config does not
round-trip, a `keras.Model` subclass with its own `train_step`, a keras_hub
task with its preprocessor, MiT (SegFormer's backbone), GroupNormalization,
and a layer whose `call` runs raw TensorFlow ops. Each builder seeds Keras
and returns ``(model, example input shape)``; the shape is what the tests
feed the model (sizes the model leaves open are filled in).
"""

import keras
import keras_hub
import numpy as np
import tensorflow as tf

L = keras.layers
PACKAGE = "keras_epi_user_models"


class DepthToSpace(L.Layer):
  """keras.io "Image Super-Resolution using an Efficient Sub-Pixel CNN":
  no `**kwargs` in `__init__` (so Keras' from_config cannot rebuild it), a
  `call` with dynamic shapes."""

  def __init__(self, block_size):
    super().__init__()
    self.block_size = block_size

  def call(self, x):
    batch, height, width, depth = keras.ops.shape(x)
    depth = depth // (self.block_size ** 2)
    x = keras.ops.reshape(x, [batch, height, width, self.block_size,
                              self.block_size, depth])
    x = keras.ops.transpose(x, [0, 1, 3, 2, 4, 5])
    return keras.ops.reshape(x, [batch, height * self.block_size,
                                 width * self.block_size, depth])


def super_resolution():
  """The sub-pixel CNN on (None, None, 1), scaled down."""
  keras.utils.set_random_seed(0)
  x = keras.Input((None, None, 1))
  h = L.Conv2D(16, 5, padding="same", activation="relu")(x)
  h = L.Conv2D(16, 3, padding="same", activation="relu")(h)
  h = L.Conv2D(8, 3, padding="same", activation="relu")(h)
  h = L.Conv2D(4, 3, padding="same")(h)
  return keras.Model(x, DepthToSpace(2)(h), name="super_resolution"), (
      12, 12, 1)


class OrthogonalRegularizer(keras.regularizers.Regularizer):
  """keras.io PointNet's regularizer: no `get_config`."""

  def __init__(self, num_features, l2reg=0.001):
    self.num_features = num_features
    self.l2reg = l2reg
    self.eye = keras.ops.eye(num_features)

  def __call__(self, x):
    x = keras.ops.reshape(x, (-1, self.num_features, self.num_features))
    xxt = keras.ops.tensordot(x, x, axes=(2, 2))
    xxt = keras.ops.reshape(xxt, (-1, self.num_features, self.num_features))
    return keras.ops.sum(self.l2reg * keras.ops.square(xxt - self.eye))


def point_cloud():
  """keras.io PointNet on (None, 3) points, with its T-net, scaled down."""
  keras.utils.set_random_seed(0)
  points = keras.Input((None, 3))

  def conv_bn(h, filters):
    h = L.Conv1D(filters, 1)(h)
    return L.ReLU()(L.BatchNormalization(momentum=0.0)(h))

  h = conv_bn(points, 8)
  h = L.GlobalMaxPooling1D()(conv_bn(h, 16))
  h = L.Dense(3 * 3, kernel_initializer="zeros",
              bias_initializer=keras.initializers.Constant(
                  np.eye(3).flatten()),
              activity_regularizer=OrthogonalRegularizer(3))(
                  L.Dense(8, activation="relu")(h))
  transformed = L.Dot(axes=(2, 1))([points, L.Reshape((3, 3))(h)])
  h = L.GlobalMaxPooling1D()(conv_bn(conv_bn(transformed, 8), 16))
  return keras.Model(points, L.Dense(4)(h), name="pointnet"), (10, 3)


@keras.saving.register_keras_serializable(package=PACKAGE)
class CustomModel(keras.Model):
  """keras.io "Customizing what happens in fit()": its own `train_step`
  and a loss tracker, built functionally."""

  def __init__(self, *args, **kwargs):
    super().__init__(*args, **kwargs)
    self.loss_tracker = keras.metrics.Mean(name="custom_loss")

  def train_step(self, data):
    x, y = data
    with tf.GradientTape() as tape:
      y_pred = self(x, training=True)
      loss = self.compute_loss(y=y, y_pred=y_pred)
    gradients = tape.gradient(loss, self.trainable_variables)
    self.optimizer.apply(gradients, self.trainable_variables)
    self.loss_tracker.update_state(loss)
    return {"custom_loss": self.loss_tracker.result()}

  @property
  def metrics(self):
    return [self.loss_tracker]


def custom_train_step():
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 3, padding="same", use_bias=False)(x)
  h = L.ReLU()(L.BatchNormalization()(h))
  h = L.Conv2D(8, 3, padding="same", use_bias=False)(h)
  h = L.ReLU()(L.BatchNormalization()(h))
  y = L.Dense(3)(L.GlobalAveragePooling2D()(h))
  return CustomModel(x, y, name="custom"), (8, 8, 3)


def hub_classifier_with_preprocessor():
  """keras_hub's ResNetImageClassifier with its preprocessor (its image
  converter rescales raw [0, 255] images)."""
  keras.utils.set_random_seed(0)
  backbone = keras_hub.models.ResNetBackbone(  # the first filters: 64
      input_conv_filters=[64], input_conv_kernel_sizes=[3],
      stackwise_num_filters=[64, 32], stackwise_num_blocks=[1, 1],
      stackwise_num_strides=[1, 2], block_type="basic_block",
      use_pre_activation=False, image_shape=(16, 16, 3))
  preprocessor = keras_hub.models.ResNetImageClassifierPreprocessor(
      image_converter=keras_hub.layers.ResNetImageConverter(
          image_size=(16, 16), scale=1 / 255.0))
  model = keras_hub.models.ResNetImageClassifier(
      backbone=backbone, num_classes=3, preprocessor=preprocessor,
      compile=False)
  return model, (16, 16, 3)


def mit():
  """keras_hub's MiT (Mix Transformer, SegFormer's backbone), two stages."""
  keras.utils.set_random_seed(0)
  model = keras_hub.models.MiTBackbone(
      layerwise_depths=[1, 1], num_layers=2, layerwise_num_heads=[1, 2],
      layerwise_sr_ratios=[2, 1], max_drop_path_rate=0.0,
      layerwise_patch_sizes=[7, 3], layerwise_strides=[4, 2],
      hidden_dims=[8, 16], image_shape=(32, 32, 3))
  return model, (32, 32, 3)


def group_norm():
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(16, 3, padding="same")(x)
  h = L.Activation("swish")(L.GroupNormalization(4)(h))
  h = L.Conv2D(8, 3, padding="same")(h)
  h = L.Activation("swish")(L.GroupNormalization(2)(h))
  y = L.Dense(3)(L.GlobalAveragePooling2D()(h))
  return keras.Model(x, y, name="group_norm"), (8, 8, 3)


@keras.saving.register_keras_serializable(package=PACKAGE)
class Involution(L.Layer):
  """keras.io "Involutional neural networks", scaled down: its `call` runs
  `tf.image.extract_patches`, which symbolic inputs cannot trace."""

  def __init__(self, channel, group_number, kernel_size, reduction_ratio,
               **kwargs):
    super().__init__(**kwargs)
    self.channel, self.group_number = channel, group_number
    self.kernel_size, self.reduction_ratio = kernel_size, reduction_ratio
    self.reduce = L.Conv2D(channel // reduction_ratio, 1)
    self.span = L.Conv2D(kernel_size * kernel_size * group_number, 1)

  def call(self, x):
    b = keras.ops.shape(x)[0]
    h, w = x.shape[1], x.shape[2]
    kernel = self.span(self.reduce(x))
    kernel = keras.ops.reshape(kernel, (b, h, w, self.kernel_size ** 2, 1,
                                        self.group_number))
    patches = tf.image.extract_patches(
        x, sizes=[1, self.kernel_size, self.kernel_size, 1],
        strides=[1, 1, 1, 1], rates=[1, 1, 1, 1], padding="SAME")
    patches = keras.ops.reshape(patches, (
        b, h, w, self.kernel_size ** 2, self.channel // self.group_number,
        self.group_number))
    return keras.ops.reshape(keras.ops.sum(kernel * patches, axis=3),
                             (b, h, w, self.channel))

  def get_config(self):
    return {**super().get_config(), "channel": self.channel,
            "group_number": self.group_number,
            "kernel_size": self.kernel_size,
            "reduction_ratio": self.reduction_ratio}


def involution():
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(8, 3, padding="same", activation="relu")(x)
  h = Involution(8, 2, 3, 2)(h)
  h = L.Conv2D(8, 3, padding="same", activation="relu")(h)
  y = L.Dense(3)(L.GlobalAveragePooling2D()(h))
  return keras.Model(x, y, name="involution"), (8, 8, 3)


USER_MODELS = {
    "super_resolution": super_resolution,
    "point_cloud": point_cloud,
    "custom_train_step": custom_train_step,
    "hub_classifier_with_preprocessor": hub_classifier_with_preprocessor,
    "mit": mit,
    "group_norm": group_norm,
    "involution": involution,
}
