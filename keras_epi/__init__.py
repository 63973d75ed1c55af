"""keras_epi: early structural pruning (EPI) for Keras 3 CNNs.

Public API:
  channel_groups, ChannelGroup: which channels of a model are coupled.
  prune_model: physically remove channels, keeping every surviving weight.
  count_macs: multiply-accumulates for one example.
"""

from keras_epi.budget import count_macs
from keras_epi.graph import ChannelGroup
from keras_epi.graph import channel_groups
from keras_epi.surgeon import prune_model
from keras_epi.version import __version__

__all__ = [
    "ChannelGroup",
    "channel_groups",
    "count_macs",
    "prune_model",
    "__version__",
]
