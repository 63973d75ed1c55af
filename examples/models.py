"""Model builders for the example trainers.

CIFAR-style ResNets (He et al. 2016, "Deep Residual Learning", section 4.2):
depth 6n + 2, three stages of n basic blocks with 16, 32 and 64 filters, a
1x1 projection shortcut where the shape changes. They are the standard small
nets of the pruning literature (ResNet-20/56 on CIFAR-10). Any
`keras.applications` CNN can be built by name too (weights=None: no
downloads). All models output logits.
"""

import keras

CIFAR_RESNETS = {"resnet20": 20, "resnet32": 32, "resnet44": 44,
                 "resnet56": 56, "resnet110": 110}


def resnet_cifar(depth, input_shape, num_classes, width=16,
                 weight_decay=1e-4, bn_momentum=0.9, name=None,
                 keras_module=keras):
  """A CIFAR-style ResNet of `depth` = 6n + 2 layers, returning logits.

  Args:
    depth: 20, 32, 44, 56, 110, ... (6n + 2).
    input_shape: (height, width, channels).
    num_classes: Classifier width.
    width: Filters of the first stage (16 in the paper; doubled per stage).
    weight_decay: L2 coefficient on conv and dense kernels.
    bn_momentum: BatchNormalization moving-average momentum. 0.9 (the
      PyTorch/ResNet-paper convention) rather than Keras' 0.99: with the
      short schedules of these examples, 0.99 leaves the moving statistics
      far behind the weights and inference accuracy collapses (measured:
      train-mode 0.79 vs inference 0.27 after 3 epochs).
    name: Model name; "resnet{depth}" by default.
    keras_module: The Keras to build with: Keras 3 (default), or `tf_keras`
      for peers that need Keras 2 (the TFMOT comparison in benchmarks/).

  Returns:
    A functional `keras.Model`.
  """
  if (depth - 2) % 6 or depth < 8:
    raise ValueError(f"ResNet depth must be 6n + 2 (20, 32, 44, 56, 110), "
                     f"received {depth}.")
  blocks = (depth - 2) // 6
  L = keras_module.layers  # pylint: disable=invalid-name
  regularizer = (keras_module.regularizers.L2(weight_decay) if weight_decay
                 else None)

  def conv(filters, kernel, strides, name):
    return L.Conv2D(filters, kernel, strides=strides, padding="same",
                    use_bias=False, kernel_initializer="he_normal",
                    kernel_regularizer=regularizer, name=name)

  x = keras_module.Input(input_shape, name="images")
  h = conv(width, 3, 1, "stem_conv")(x)
  h = L.ReLU(name="stem_relu")(L.BatchNormalization(momentum=bn_momentum, name="stem_bn")(h))
  for stage in range(3):
    filters = width * 2 ** stage
    for block in range(blocks):
      prefix = f"stage{stage + 1}_block{block + 1}"
      strides = 2 if stage > 0 and block == 0 else 1
      r = conv(filters, 3, strides, f"{prefix}_conv1")(h)
      r = L.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn1")(r)
      r = L.ReLU(name=f"{prefix}_relu1")(r)
      r = conv(filters, 3, 1, f"{prefix}_conv2")(r)
      r = L.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_bn2")(r)
      if strides != 1 or h.shape[-1] != filters:
        h = conv(filters, 1, strides, f"{prefix}_shortcut_conv")(h)
        h = L.BatchNormalization(momentum=bn_momentum, name=f"{prefix}_shortcut_bn")(h)
      h = L.Add(name=f"{prefix}_add")([r, h])
      h = L.ReLU(name=f"{prefix}_relu2")(h)
  h = L.GlobalAveragePooling2D(name="pool")(h)
  logits = L.Dense(num_classes, kernel_regularizer=regularizer,
                   name="logits")(h)
  return keras_module.Model(x, logits, name=name or f"resnet{depth}")


def warmup_cosine(peak, epochs, steps_per_epoch, warmup_epochs):
  """The examples' learning-rate schedule: linear warm-up from 0 to `peak`
  over `warmup_epochs`, then cosine decay to 0 at the last step."""
  total = max(epochs * steps_per_epoch, 1)
  warmup = min(int(warmup_epochs * steps_per_epoch), total - 1)
  return keras.optimizers.schedules.CosineDecay(
      initial_learning_rate=0.0 if warmup else peak,
      decay_steps=total - warmup, warmup_target=peak if warmup else None,
      warmup_steps=warmup)


def build_model(name, input_shape, num_classes, weight_decay=1e-4):
  """A model by name: a CIFAR ResNet or a keras.applications CNN.

  Raises:
    ValueError: for an unknown name (lists the known ones).
  """
  if name in CIFAR_RESNETS:
    return resnet_cifar(CIFAR_RESNETS[name], input_shape, num_classes,
                        weight_decay=weight_decay)
  builder = getattr(keras.applications, name, None)
  if builder is None or not callable(builder) or name[0].islower():
    raise ValueError(
        f"Unknown model {name!r}: use one of {sorted(CIFAR_RESNETS)} or a "
        "keras.applications model name such as ResNet50 or MobileNetV2.")
  return builder(weights=None, input_shape=input_shape, classes=num_classes,
                 classifier_activation=None)
