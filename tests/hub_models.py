"""Small, randomly initialised keras_hub vision models for the tests.

Every builder makes its model from constructor arguments (never from a
preset: nothing is downloaded), seeds with
``keras.utils.set_random_seed(0)`` and returns ``(model, input_shape)``, where
``model`` is a functional ``keras.Model`` (keras_hub backbones and tasks are
functional models) and ``input_shape`` excludes the batch axis.

Notes on the structures these models contain (keras_hub 0.32):

* Composite layers whose ``call`` runs sublayers: MobileNet's
  ``DepthwiseConvBlock``, ``InvertedResidualBlock``, ``ConvBnActBlock``,
  ``SqueezeAndExcite2D``; EfficientNet's ``MBConvBlock``, ``FusedMBConvBlock``
  (which create new GlobalAveragePooling2D / Reshape / Multiply / Add layers
  inside ``call``); all HGNetV2 layers; DeepLabV3's ``SpatialPyramidPooling``
  (keras.Sequential sublayers, a Resizing layer made in ``call``);
  RetinaNet's ``FeaturePyramid`` (dict in, dict out) and ``PredictionHead``
  (one layer shared by every pyramid level).
* Bare ``keras.ops`` in the functional graph: ``ops.pad(-inf)`` before the
  stem max-pool of ResNetV2 and of CSPNet with ``stem_pooling="max"``,
  ``ops.split`` in the CSPNet "csp"/"cs3" stages.
* Nested functional models: DeepLabV3, RetinaNet and BASNet wrap (parts of) an
  image encoder built with ``image_shape=(None, None, 3)``; tasks nest their
  backbone.
* Tasks are built with ``preprocessor=None`` (the functional graph does not
  use the preprocessor; it is only used by ``fit``/``predict`` on raw data)
  and ``compile=False``.
"""

import keras
import keras_hub

# The input of every model: small, fixed, channels_last.
SHAPE = (64, 64, 3)
SMALL = (32, 32, 3)


# ------------------------------------------------------------------ ResNet --

def _resnet(block_type="basic_block", pre_activation=False, stem=(64,),
            stem_kernels=(7,), filters=(64, 128), blocks=(1, 1),
            strides=(1, 2), image_shape=SHAPE):
  # keras_hub requires stackwise_num_filters[0] == 64.
  return keras_hub.models.ResNetBackbone(
      input_conv_filters=list(stem),
      input_conv_kernel_sizes=list(stem_kernels),
      stackwise_num_filters=list(filters),
      stackwise_num_blocks=list(blocks),
      stackwise_num_strides=list(strides),
      block_type=block_type,
      use_pre_activation=pre_activation,
      image_shape=image_shape,
  )


def resnet_v1():
  keras.utils.set_random_seed(0)
  return _resnet(), SHAPE


def resnet_v1_bottleneck():
  keras.utils.set_random_seed(0)
  return _resnet("bottleneck_block", filters=(64, 64), blocks=(2, 1)), SHAPE


def resnet_v2():
  """Pre-activation: a bare ops.pad(-inf) node before pool1_pool."""
  keras.utils.set_random_seed(0)
  return _resnet(pre_activation=True, blocks=(2, 1)), SHAPE


def resnet_vd():
  """ResNet-vd: three stem convolutions, avg-pool + 1x1 conv shortcuts."""
  keras.utils.set_random_seed(0)
  return _resnet("basic_block_vd", stem=(16, 16, 32), stem_kernels=(3, 3, 3),
                 blocks=(1, 2)), SHAPE


def resnet_vd_bottleneck():
  keras.utils.set_random_seed(0)
  return _resnet("bottleneck_block_vd", stem=(16, 16, 32),
                 stem_kernels=(3, 3, 3), filters=(64, 64),
                 blocks=(1, 1)), SHAPE


# --------------------------------------------------------------- MobileNet --

def _mobilenet_v3(image_shape=SHAPE):
  return keras_hub.models.MobileNetBackbone(
      stackwise_expansion=[[16, 32], [48, 48]],
      stackwise_num_blocks=[2, 2],
      stackwise_num_filters=[[16, 16], [24, 24]],
      stackwise_kernel_size=[[3, 3], [5, 5]],
      stackwise_num_strides=[[2, 1], [2, 1]],
      stackwise_se_ratio=[[None, 0.25], [0.25, 0.25]],
      stackwise_activation=[["relu", "relu"], ["hard_swish", "hard_swish"]],
      stackwise_padding=[[1, 1], [2, 2]],
      output_num_filters=64,
      depthwise_filters=16,
      depthwise_stride=2,
      depthwise_residual=False,
      last_layer_filter=64,
      squeeze_and_excite=0.5,
      image_shape=image_shape,
      input_activation="hard_swish",
      output_activation="hard_swish",
      input_num_filters=16,
  )


def mobilenet_v3():
  keras.utils.set_random_seed(0)
  return _mobilenet_v3(), SHAPE


def mobilenet_v3_residual_depthwise():
  """DepthwiseConvBlock with residual=True (stride 1, same filters)."""
  keras.utils.set_random_seed(0)
  model = keras_hub.models.MobileNetBackbone(
      stackwise_expansion=[[32, 48]],
      stackwise_num_blocks=[2],
      stackwise_num_filters=[[24, 24]],
      stackwise_kernel_size=[[3, 5]],
      stackwise_num_strides=[[2, 1]],
      stackwise_se_ratio=[[0.25, None]],
      stackwise_activation=[["relu", "hard_swish"]],
      stackwise_padding=[[1, 2]],
      output_num_filters=None,
      depthwise_filters=16,
      depthwise_stride=1,
      depthwise_residual=True,
      last_layer_filter=48,
      squeeze_and_excite=None,
      image_shape=SHAPE,
      input_num_filters=16,
  )
  return model, SHAPE


# ------------------------------------------------------------ EfficientNet --

def _efficientnet(block_types, image_shape=SHAPE, dropout=0.2):
  n = len(block_types)
  return keras_hub.models.EfficientNetBackbone(
      stackwise_width_coefficients=[1.0] * n,
      stackwise_depth_coefficients=[1.0] * n,
      stackwise_kernel_sizes=[3, 3, 3, 3][:n],
      stackwise_num_repeats=[1, 2, 2, 1][:n],
      stackwise_input_filters=[16, 16, 24, 32][:n],
      stackwise_output_filters=[16, 24, 32, 48][:n],
      stackwise_expansion_ratios=[1, 4, 4, 4][:n],
      stackwise_squeeze_and_excite_ratios=[0.0, 0.0, 0.25, 0.25][:n],
      stackwise_strides=[1, 2, 2, 2][:n],
      stackwise_block_types=list(block_types),
      dropout=dropout,
      num_features=64,
      input_shape=image_shape,
  )


def efficientnet_v2():
  """FusedMBConvBlock (expand 1 and 4) then MBConvBlock (with SE)."""
  keras.utils.set_random_seed(0)
  return _efficientnet(["fused", "fused", "unfused", "unfused"]), SHAPE


def efficientnet_v1():
  """'v1' stacks are plain functional blocks (no custom layers)."""
  keras.utils.set_random_seed(0)
  return _efficientnet(["v1", "v1", "v1", "v1"]), SHAPE


def efficientnet_cba():
  """CBABlock stacks (conv-bn-act), as in EfficientNet-lite style configs."""
  keras.utils.set_random_seed(0)
  return _efficientnet(["cba", "cba", "fused", "unfused"]), SHAPE


# -------------------------------------------------------- DenseNet, VGG, .. --

def densenet():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.DenseNetBackbone(
      stackwise_num_repeats=[2, 2, 2], growth_rate=8, image_shape=SHAPE)
  return model, SHAPE


def vgg():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.VGGBackbone(
      stackwise_num_repeats=[1, 2, 2], stackwise_num_filters=[16, 32, 64],
      image_shape=SHAPE)
  return model, SHAPE


def xception():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.XceptionBackbone(
      stackwise_conv_filters=[[16, 32], [64, 64], [96, 96], [96, 96, 96],
                              [96, 128], [128, 192]],
      stackwise_pooling=[False, True, True, False, True, False],
      image_shape=SHAPE)
  return model, SHAPE


# ----------------------------------------------------------------- CSPNet --

def _cspnet(stage_type, block_type, image_shape=SHAPE, **kwargs):
  args = dict(
      stem_filters=16,
      stem_kernel_size=3,
      stem_strides=2,
      stackwise_depth=[1, 2, 1],
      stackwise_strides=2,
      stackwise_num_filters=[32, 64, 96],
      stage_type=stage_type,
      block_type=block_type,
      image_shape=image_shape,
  )
  args.update(kwargs)
  return keras_hub.models.CSPNetBackbone(**args)


def cspnet_csp_dark():
  """CSPDarkNet-like: 'csp' stages of dark blocks (ops.split, concatenate)."""
  keras.utils.set_random_seed(0)
  return _cspnet("csp", "dark_block", expand_ratio=[2.0, 1.0],
                 bottle_ratio=[0.5, 1.0], block_ratio=[1.0, 0.5],
                 down_growth=True), SHAPE


def cspnet_csp_bottleneck():
  """CSPResNet-like: 'csp' stages of bottleneck blocks, stem max-pool.

  stem_strides=4 with stem_pooling='max' adds ops.pad(-inf) + MaxPooling2D.
  """
  keras.utils.set_random_seed(0)
  return _cspnet("csp", "bottleneck_block", stem_filters=16,
                 stem_kernel_size=5, stem_strides=4, stem_pooling="max",
                 stem_padding="valid", expand_ratio=2.0, bottle_ratio=0.5,
                 block_ratio=1.0, cross_linear=True,
                 stackwise_strides=[1, 2, 2], activation="relu"), SHAPE


def cspnet_cs3_edge():
  """'cs3' stages (one split per stage) of edge blocks."""
  keras.utils.set_random_seed(0)
  return _cspnet("cs3", "edge_block", expand_ratio=1.0, bottle_ratio=0.5,
                 block_ratio=0.5, activation="silu"), SHAPE


def cspnet_cs3_bottleneck_grouped():
  """'cs3' stages of grouped bottleneck blocks with avg_down (ResNeXt-like)."""
  keras.utils.set_random_seed(0)
  return _cspnet("cs3", "bottleneck_block", stem_filters=[16, 32],
                 stackwise_num_filters=[64, 128, 128], expand_ratio=1.0,
                 bottle_ratio=1.0, block_ratio=0.5, groups=4, avg_down=True,
                 activation="relu"), SHAPE


def cspnet_dark():
  """DarkNet-like: 'dark' stages (no split) of dark blocks."""
  keras.utils.set_random_seed(0)
  return _cspnet("dark", "dark_block", bottle_ratio=0.5,
                 block_ratio=1.0), SHAPE


# ---------------------------------------------------------------- HGNetV2 --

def _hgnetv2(image_shape=SHAPE, lab=False, light=(False, False, True, True)):
  #                        in, mid, out, blocks, layers, kernel
  stage_filters = [(16, 16, 32, 1, 2, 3),
                   (32, 16, 48, 1, 2, 3),
                   (48, 24, 64, 2, 2, 5),
                   (64, 32, 96, 1, 2, 5)]
  return keras_hub.models.HGNetV2Backbone(
      depths=[1, 1, 2, 1],
      embedding_size=16,
      hidden_sizes=[32, 48, 64, 96],
      stem_channels=[3, 16, 16],
      hidden_act="relu",
      use_learnable_affine_block=lab,
      stackwise_stage_filters=stage_filters,
      apply_downsample=[False, True, True, True],
      use_lightweight_conv_block=list(light),
      image_shape=image_shape,
  )


def hgnetv2():
  """All layers are composite (HGNetV2Embeddings, HGNetV2Encoder, ...).

  The backbone's output is a dict of the stem and every stage's output.
  """
  keras.utils.set_random_seed(0)
  return _hgnetv2(), SHAPE


def hgnetv2_lab():
  """With use_learnable_affine_block: scalar scale/bias weights per conv."""
  keras.utils.set_random_seed(0)
  return _hgnetv2(lab=True), SHAPE


# -------------------------------------------------------------- DeepLabV3 --

def _deeplab_encoder():
  # The image encoder keeps keras_hub's default (None, None, 3) input, as it
  # would when loaded from a preset; DeepLabV3 nests keras.Model(encoder
  # inputs, encoder pyramid outputs).
  return _resnet(filters=(64, 64, 64), blocks=(1, 1, 1), strides=(1, 2, 2),
                 image_shape=(None, None, 3))


def deeplab_v3():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.DeepLabV3Backbone(
      image_encoder=_deeplab_encoder(),
      spatial_pyramid_pooling_key="P4",
      upsampling_size=4,
      dilation_rates=[2, 4],
      low_level_feature_key="P2",
      projection_filters=16,
      image_shape=SHAPE,
  )
  return model, SHAPE


def deeplab_v3_segmenter():
  keras.utils.set_random_seed(0)
  backbone = keras_hub.models.DeepLabV3Backbone(
      image_encoder=_deeplab_encoder(),
      spatial_pyramid_pooling_key="P4",
      upsampling_size=16,
      dilation_rates=[2],
      image_shape=SHAPE,
  )
  model = keras_hub.models.DeepLabV3ImageSegmenter(
      backbone=backbone, num_classes=3, preprocessor=None, compile=False)
  return model, SHAPE


# -------------------------------------------------------------- RetinaNet --

def _retinanet_backbone(image_shape=SHAPE):
  # FeaturePyramid has 256 filters whatever the encoder: levels P3-P4 only.
  encoder = _resnet(filters=(64, 64, 64), blocks=(1, 1, 1), strides=(1, 2, 2),
                    image_shape=(None, None, 3))
  return keras_hub.models.RetinaNetBackbone(
      image_encoder=encoder, min_level=3, max_level=4, use_p5=False,
      image_shape=image_shape)


def retinanet():
  keras.utils.set_random_seed(0)
  return _retinanet_backbone(), SHAPE


def retinanet_detector():
  """PredictionHead layers are shared: called once per pyramid level."""
  keras.utils.set_random_seed(0)
  model = keras_hub.models.RetinaNetObjectDetector(
      backbone=_retinanet_backbone(), num_classes=2,
      pre_logits_num_conv_layers=1, preprocessor=None, compile=False)
  return model, SHAPE


# ----------------------------------------------------------------- BASNet --

def _basnet_backbone(image_shape=SHAPE):
  # BASNet cuts a 4-stack ResNet encoder (image_shape must stay
  # (None, None, 3)) into nested functional models, the first starting at
  # pool1_pool, and feeds it its own projection conv: `projection_filters`
  # must equal the encoder's stem width. A "_vd" block type gives stack 0 a
  # conv shortcut, so the stem can be 8 wide; the decoder is then
  # 8 * projection_filters = 64 wide (keras_hub's default 64 gives 512).
  encoder = _resnet("basic_block_vd", stem=(8,), stem_kernels=(3,),
                    filters=(64, 64, 64, 64), blocks=(1, 1, 1, 1),
                    strides=(1, 2, 2, 2), image_shape=(None, None, 3))
  return keras_hub.models.BASNetBackbone(
      image_encoder=encoder, num_classes=1, projection_filters=8,
      image_shape=image_shape)


def basnet():
  keras.utils.set_random_seed(0)
  return _basnet_backbone(), SHAPE


def basnet_segmenter():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.BASNetImageSegmenter(
      backbone=_basnet_backbone(), preprocessor=None, compile=False)
  return model, SHAPE


# ------------------------------------------------------- ImageClassifiers --

def resnet_classifier():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.ResNetImageClassifier(
      backbone=_resnet(), num_classes=10, preprocessor=None, compile=False)
  return model, SHAPE


def mobilenet_classifier():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.MobileNetImageClassifier(
      backbone=_mobilenet_v3(), num_classes=10, num_features=64,
      preprocessor=None, compile=False)
  return model, SHAPE


def efficientnet_classifier():
  keras.utils.set_random_seed(0)
  model = keras_hub.models.EfficientNetImageClassifier(
      backbone=_efficientnet(["fused", "fused", "unfused", "unfused"]),
      num_classes=10, dropout=0.2, preprocessor=None, compile=False)
  return model, SHAPE


def hgnetv2_classifier():
  """HGNetV2ImageClassifier's preprocessor is a required argument."""
  keras.utils.set_random_seed(0)
  model = keras_hub.models.HGNetV2ImageClassifier(
      backbone=_hgnetv2(), preprocessor=None, num_classes=10, head_filters=64,
      compile=False)
  return model, SHAPE


HUB_MODELS = {
    "ResNetV1": resnet_v1,
    "ResNetV1Bottleneck": resnet_v1_bottleneck,
    "ResNetV2": resnet_v2,
    "ResNetVd": resnet_vd,
    "ResNetVdBottleneck": resnet_vd_bottleneck,
    "MobileNetV3": mobilenet_v3,
    "MobileNetV3ResidualDepthwise": mobilenet_v3_residual_depthwise,
    "EfficientNetV2": efficientnet_v2,
    "EfficientNetV1": efficientnet_v1,
    "EfficientNetCBA": efficientnet_cba,
    "DenseNet": densenet,
    "VGG": vgg,
    "Xception": xception,
    "CSPNetCspDark": cspnet_csp_dark,
    "CSPNetCspBottleneck": cspnet_csp_bottleneck,
    "CSPNetCs3Edge": cspnet_cs3_edge,
    "CSPNetCs3BottleneckGrouped": cspnet_cs3_bottleneck_grouped,
    "CSPNetDark": cspnet_dark,
    "HGNetV2": hgnetv2,
    "HGNetV2Lab": hgnetv2_lab,
    "DeepLabV3": deeplab_v3,
    "DeepLabV3Segmenter": deeplab_v3_segmenter,
    "RetinaNet": retinanet,
    "RetinaNetDetector": retinanet_detector,
    "BASNet": basnet,
    "BASNetSegmenter": basnet_segmenter,
    "ResNetClassifier": resnet_classifier,
    "MobileNetClassifier": mobilenet_classifier,
    "EfficientNetClassifier": efficientnet_classifier,
    "HGNetV2Classifier": hgnetv2_classifier,
}
