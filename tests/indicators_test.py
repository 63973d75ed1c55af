"""Tests of keras_epi.indicators against hand-computed sequences."""

import numpy as np
import pytest

from keras_epi import indicators

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def test_layer_distance_and_similarity_by_hand():
  np.testing.assert_allclose(indicators.layer_distance([4, 0, 3], [2, 0, 3]),
                             [2 / 6, 0.0, 0.0])
  assert indicators.similarity([4, 0, 3], [2, 0, 3]) == pytest.approx(
      1 - (1 / 3) / 3)
  assert indicators.similarity([5, 5], [5, 5]) == 1.0
  assert indicators.similarity([1, 0], [0, 1]) == 0.0


def test_epi_values_by_hand():
  epi = indicators.EarlyPruningIndicator(window=2, threshold=0.99)
  archs = [[8, 4], [4, 4], [3, 4], [3, 4]]
  for a in archs:
    epi.update(a)
  psi = indicators.similarity
  expected = [None, None,
              (psi(archs[2], archs[1]) + psi(archs[2], archs[0])) / 2,
              (psi(archs[3], archs[2]) + psi(archs[3], archs[1])) / 2]
  assert epi.values[:2] == [None, None]
  np.testing.assert_allclose(epi.values[2:], expected[2:])
  # 1 - mean(|3-4|/7, 0) = 13/14; (1 + 13/14) / 2
  assert epi.values[3] == pytest.approx((1 + 13 / 14) / 2)


def test_epi_fires_at_the_first_stable_rising_epoch():
  epi = indicators.EarlyPruningIndicator(window=2, threshold=0.95)
  fired = [epi.update(a) for a in ([8, 4], [4, 4], [3, 4], [3, 4], [3, 4])]
  assert fired == [False, False, False, True, True]


def test_epi_does_not_fire_below_threshold_or_when_falling():
  epi = indicators.EarlyPruningIndicator(window=1, threshold=0.9)
  # values: -, 1.0, 0.9 (falling from 1.0: no), 1.0 (rising: fires)
  fired = [epi.update(a) for a in ([10], [10], [8.181818], [8.181818])]
  assert epi.values[2] == pytest.approx(0.9, abs=1e-6)
  assert fired == [False, True, False, True]


def test_epi_never_fires_on_oscillation():
  epi = indicators.EarlyPruningIndicator(window=5, threshold=0.944)
  fired = [epi.update([64, 16] if t % 2 else [16, 64]) for t in range(40)]
  assert not any(fired)
  assert all(0.0 <= v <= 1.0 for v in epi.values if v is not None)


def test_epi_values_stay_in_unit_interval():
  rng = np.random.default_rng(0)
  epi = indicators.EarlyPruningIndicator(window=3, threshold=0.5)
  for _ in range(50):
    epi.update(rng.integers(0, 64, size=10))
  values = [v for v in epi.values if v is not None]
  assert values and min(values) >= 0.0 and max(values) <= 1.0


def test_epi_state_round_trip():
  epi = indicators.EarlyPruningIndicator(window=2, threshold=0.9)
  for a in ([8, 4], [4, 4], [3, 4]):
    epi.update(a)
  again = indicators.EarlyPruningIndicator(window=2, threshold=0.9)
  again.set_state(epi.get_state())
  assert again.values == epi.values
  assert again.update([3, 4]) == epi.update([3, 4])


@pytest.mark.parametrize("kwargs, message", [
    (dict(window=0), "`window` must be an integer >= 1"),
    (dict(window=2.5), "`window` must be an integer >= 1"),
    (dict(threshold=0.0), r"`threshold` must be a number in \(0, 1\]"),
    (dict(threshold=1.5), r"`threshold` must be a number in \(0, 1\]"),
])
def test_epi_rejects_bad_arguments(kwargs, message):
  with pytest.raises(ValueError, match=message):
    indicators.EarlyPruningIndicator(**kwargs)


def test_early_bird_hamming_by_hand():
  eb = indicators.EarlyBirdIndicator(window=3, max_distance=0.3)
  masks = [[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 1, 0], [1, 0, 1, 0]]
  fired = [eb.update(m) for m in masks]
  # third: distances to [1,0,1,0] = 0, to [1,1,0,0] = 2/4 -> 0.5 (no)
  # fourth: 0 and 0 -> fires
  assert eb.values == [None, None, 0.5, 0.0]
  assert fired == [False, False, False, True]


def test_early_bird_never_fires_on_oscillation():
  eb = indicators.EarlyBirdIndicator()
  assert not any(eb.update([t % 2, 1 - t % 2] * 10) for t in range(30))


def test_early_bird_rejects_bad_arguments():
  with pytest.raises(ValueError, match="`window` must be an integer >= 2"):
    indicators.EarlyBirdIndicator(window=1)
  with pytest.raises(ValueError, match="`max_distance`"):
    indicators.EarlyBirdIndicator(max_distance=0)
