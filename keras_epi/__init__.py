"""keras_epi: early structural pruning (EPI) for Keras 3 CNNs.

Public API:
  channel_groups, ChannelGroup: which channels of a model are coupled.
  prune_model: physically remove channels, keeping every surviving weight.
  count_macs: multiply-accumulates for one example (of a plan, per layer).
  magnitude_importance: filter-norm scores per group.
  select_channels: the dominant sub-network under a neuron, MAC or latency
    budget.
  LatencyTable: measured per-layer latency at a grid of widths; predicts a
    plan's latency.
  max_latency_ratio: the largest latency ratio a table says can be removed.
  select_channels_timed: a latency plan corrected by timing it here.
  uniform_plan: the same fraction of every group kept.
  EPICallback: scoring, the Early Pruning Indicator and pruning in model.fit.
  triggers: when to prune (EPITrigger, EarlyBirdTrigger, AtEpoch, Deadline,
    Gradual, or a Trigger of your own), for EPICallback(trigger=...).
  fit: model.fit that continues training on the pruned model.
  training_cost (EPICallback.training_cost, keras_epi.cost): what a run's
    phases took.
  EarlyPruningIndicator, EarlyBirdIndicator: the stability indicators.
  fold_batchnorm: an inference copy with BatchNormalization folded into
    the convolutions before it (for export and timing).
  register_layer, unregister_layer, LayerRule, ChannelCall: teach keras_epi
    a layer type (the layer registry, keras_epi.layers; a flow function
    receives a ChannelCall).
  multi_worker_fit_workaround: lets Keras 3's model.fit run under
    MultiWorkerMirroredStrategy (keras_epi.fit applies it itself).
  timing: callables timed alternately, and the machine record (the timer of
    LatencyTable and of the benchmarks).
"""

from keras_epi import _attention_layers  # pylint: disable=unused-import
from keras_epi import _builtin_layers  # pylint: disable=unused-import
from keras_epi import _op_rules  # pylint: disable=unused-import
from keras_epi.budget import count_macs
from keras_epi.budget import max_latency_ratio
from keras_epi.budget import select_channels
from keras_epi.budget import uniform_plan
from keras_epi.callbacks import EPICallback
from keras_epi.export import export_tflite
from keras_epi.export import fold_batchnorm
from keras_epi.graph import ChannelGroup
from keras_epi.graph import channel_groups
from keras_epi.importance import magnitude_importance
from keras_epi.indicators import EarlyBirdIndicator
from keras_epi.indicators import EarlyPruningIndicator
from keras_epi.latency import LatencyTable
from keras_epi.layers import ChannelCall
from keras_epi.layers import LayerRule
from keras_epi.layers import register_layer
from keras_epi.layers import unregister_layer
from keras_epi.surgeon import prune_model
from keras_epi.timed_plan import select_channels_timed
from keras_epi.training import fit
from keras_epi.training import multi_worker_fit_workaround
from keras_epi.version import __version__
from keras_epi import timing  # pylint: disable=g-bad-import-order
from keras_epi import triggers  # pylint: disable=g-bad-import-order

__all__ = [
    "ChannelCall",
    "ChannelGroup",
    "EPICallback",
    "EarlyBirdIndicator",
    "EarlyPruningIndicator",
    "LatencyTable",
    "LayerRule",
    "channel_groups",
    "count_macs",
    "export_tflite",
    "fit",
    "fold_batchnorm",
    "magnitude_importance",
    "max_latency_ratio",
    "multi_worker_fit_workaround",
    "prune_model",
    "register_layer",
    "select_channels",
    "select_channels_timed",
    "timing",
    "triggers",
    "uniform_plan",
    "unregister_layer",
    "__version__",
]
