"""When to prune: stability indicators of the dominant sub-network.

Pure NumPy, no Keras. Two indicators:

* `EarlyPruningIndicator` (EPI; Shen et al., CVPR 2022, arXiv:2110.12007) over
  the *architecture* ``A_t = [n_t^1 .. n_t^L]`` (the kept width of every
  group) of the dominant sub-network at epoch t::

    d_l(A, B)   = |a_l - b_l| / (a_l + b_l)        (0 when both are 0)
    Psi(A, B)   = 1 - mean_l d_l(A, B)
    EPI_t       = (1/r) * sum_{j=1..r} Psi(A_t, A_{t-j})

  It fires at the first epoch t with ``EPI_t >= tau`` and
  ``EPI_t >= EPI_{t-j}`` for j = 1..r (the indicator is still rising). The
  equations follow a third-party reading of the paper; r = 5 and tau = 0.944
  (gradient) / 0.983 (magnitude) are read off the paper's figures.

* `EarlyBirdIndicator` (You et al., ICLR 2020, arXiv:1909.11957) over binary
  channel *masks*: the normalised Hamming distance between the newest mask and
  each of the `window - 1` previous ones; it fires when all are below
  `max_distance` (published constants: 5 masks, 0.1).
"""

import collections

import numpy as np

from keras_epi import _validation as validation

# The paper's thresholds per importance criterion (figure of EPI vs epoch).
PAPER_THRESHOLDS = {"taylor": 0.944, "magnitude": 0.983}


def layer_distance(a, b):
  """Per-layer distance ``|a - b| / (a + b)``, 0 where both are 0."""
  a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
  if a.shape != b.shape:
    raise ValueError(f"Architectures differ in length: {a.shape} vs {b.shape}.")
  total = a + b
  return np.divide(np.abs(a - b), total, out=np.zeros_like(total),
                   where=total > 0)


def similarity(a, b):
  """``Psi(A, B) = 1 - mean_l d_l(A, B)``, in [0, 1]."""
  d = layer_distance(a, b)
  return 1.0 - float(d.mean()) if d.size else 1.0


def epi_fires(values, window, threshold):
  """Whether the latest of `values` (EPI per epoch, None where undefined)
  fires: it is defined, at least `threshold`, and at least each of the
  `window` values before it that are defined (the indicator still rises).
  """
  if not values or values[-1] is None or values[-1] < threshold:
    return False
  latest = values[-1]
  earlier = [v for v in list(values)[-window - 1:-1] if v is not None]
  return all(latest >= e for e in earlier)


class EarlyPruningIndicator:
  """EPI over a sequence of architecture vectors.

  Args:
    window: r, the number of previous architectures compared (>= 1).
    threshold: tau in (0, 1].

  Example:
  >>> epi = EarlyPruningIndicator(window=2, threshold=0.95)
  >>> [epi.update(a) for a in ([8, 4], [4, 4], [3, 4], [3, 4])]
  [False, False, False, True]
  """

  def __init__(self, window=5, threshold=PAPER_THRESHOLDS["taylor"]):
    self.window = validation.integer("window", window, 1)
    self.threshold = validation.number("threshold", threshold, "(0, 1]")
    self.reset()

  def reset(self):
    self.architectures = []
    self.values = []  # EPI_t per update; None until `window` + 1 updates

  def update(self, architecture):
    """Adds ``A_t``; returns whether the indicator fires at t."""
    self.architectures.append(np.asarray(architecture, np.float64))
    value = self.value_at(len(self.architectures) - 1)
    self.values.append(value)
    return self.fires_at(len(self.values) - 1)

  def value_at(self, t):
    """EPI_t, or None when fewer than `window` earlier architectures exist."""
    if t < self.window:
      return None
    current = self.architectures[t]
    return float(np.mean([similarity(current, self.architectures[t - j])
                          for j in range(1, self.window + 1)]))

  def fires_at(self, t):
    """`epi_fires` at epoch t (earlier values not defined are skipped)."""
    return epi_fires(self.values[:t + 1], self.window, self.threshold)

  @property
  def latest(self):
    return self.values[-1] if self.values else None

  def get_state(self):
    return {"architectures": [a.tolist() for a in self.architectures]}

  def set_state(self, state):
    self.reset()
    for a in state["architectures"]:
      self.update(a)


class EarlyBirdIndicator:
  """Early-Bird tickets: stability of binary channel masks.

  Args:
    window: Masks kept (the newest is compared with the `window - 1` older).
    max_distance: Fire when every normalised Hamming distance is below this.
  """

  def __init__(self, window=5, max_distance=0.1):
    self.window = validation.integer("window", window, 2)
    self.max_distance = validation.number("max_distance", max_distance,
                                          "(0, 1]")
    self.reset()

  def reset(self):
    self.masks = collections.deque(maxlen=self.window)
    self.values = []  # the largest distance per update, None until full

  def update(self, mask):
    """Adds a binary mask; returns whether the indicator fires."""
    self.masks.append(np.asarray(mask, bool).ravel())
    if len(self.masks) < self.window:
      self.values.append(None)
      return False
    newest = self.masks[-1]
    distance = max(float(np.mean(newest != older))
                   for older in list(self.masks)[:-1])
    self.values.append(distance)
    return distance < self.max_distance

  @property
  def latest(self):
    return self.values[-1] if self.values else None

  def get_state(self):
    return {"masks": [m.astype(int).tolist() for m in self.masks],
            "values": list(self.values)}

  def set_state(self, state):
    self.reset()
    for m in state["masks"]:
      self.masks.append(np.asarray(m, bool))
    self.values = list(state["values"])
