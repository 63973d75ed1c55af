"""EPICallback under faults: interrupts and exceptions inside `fit`."""

import keras
import numpy as np
import pytest

import keras_epi
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


class _Interrupt(keras.callbacks.Callback):
  """Raises KeyboardInterrupt after the second batch, as Ctrl-C would."""

  def on_train_batch_end(self, batch, logs=None):
    if batch == 1:
      raise KeyboardInterrupt


def _gammas(model):
  return np.concatenate([keras.ops.convert_to_numpy(layer.gamma)
                         for layer in model.layers
                         if isinstance(layer, keras.layers.BatchNormalization)])


def _plain_fit(model, x, y):
  model.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False,
            verbose=0)


@pytest.mark.parametrize("runner", ["model.fit", "keras_epi.fit"])
def test_gradient_tap_is_removed_when_fit_is_interrupted(runner):
  # Plain SGD, no momentum: a step's change of gamma is its gradient alone.
  model = make_model(optimizer=keras.optimizers.SGD(0.1))
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="early_bird",
                             early_bird_penalty=1.0)
  with pytest.raises(KeyboardInterrupt):
    if runner == "model.fit":
      model.fit(x, y, epochs=2, batch_size=16, verbose=0,
                callbacks=[cb, _Interrupt()])
    else:
      keras_epi.fit(model, x, y, epochs=2, batch_size=16, verbose=0,
                    callbacks=[cb, _Interrupt()])
  assert "apply" not in vars(model.optimizer)

  # A later plain fit adds no L1 penalty: gamma moves exactly as in a twin
  # model that never saw the callback (penalty 1.0 * lr 0.1 would move every
  # gamma by 0.1).
  twin = make_model(optimizer=keras.optimizers.SGD(0.1))
  twin.set_weights(model.get_weights())
  _plain_fit(model, x, y)
  _plain_fit(twin, x, y)
  np.testing.assert_allclose(_gammas(model), _gammas(twin), atol=1e-6)
  assert "apply" not in vars(model.optimizer)


def test_callback_reused_after_an_interrupt_taps_only_its_own_fit():
  model = make_model(optimizer=keras.optimizers.SGD(0.1))
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="early_bird",
                             early_bird_penalty=1.0)
  with pytest.raises(KeyboardInterrupt):
    model.fit(x, y, epochs=2, batch_size=16, verbose=0,
              callbacks=[cb, _Interrupt()])
  # The same callback in the next fit starts clean: one tap, one penalty.
  before = _gammas(model)
  model.fit(x[:16], y[:16], batch_size=16, epochs=1, shuffle=False,
            verbose=0, callbacks=[cb])
  twin = make_model(optimizer=keras.optimizers.SGD(0.1))
  twin.set_weights(model.get_weights())
  assert np.abs(_gammas(model) - before).max() > 0.05  # penalty applied
  _plain_fit(model, x, y)
  _plain_fit(twin, x, y)
  np.testing.assert_allclose(_gammas(model), _gammas(twin), atol=1e-6)


def test_two_epi_callbacks_in_one_fit_are_refused():
  model = make_model()
  x, y = make_data(64)
  first = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                                prune_epoch=1)
  second = keras_epi.EPICallback(prune_ratio=0.3, policy="fixed",
                                 prune_epoch=1)
  with pytest.raises(ValueError, match="Two EPICallbacks in one fit"):
    model.fit(x, y, epochs=2, batch_size=32, verbose=0,
              callbacks=[first, second])
  # Either alone works afterwards, on the same model.
  model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[second])
  assert second.prune_epoch == 1 and "apply" not in vars(model.optimizer)


def test_nan_batches_do_not_stop_a_fixed_trigger():
  # Every batch is NaN; the loss scale skips every step, so the weights stay
  # finite but no Taylor score is: the plan falls back to filter magnitudes.
  model = make_model(optimizer=keras.optimizers.LossScaleOptimizer(
      keras.optimizers.SGD(0.05)))
  x, y = make_data(64)
  x[:] = np.nan
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 1 and cb.pruned_model is not None
  assert cb.importance and all(np.isfinite(v).all()
                               for v in cb.importance.values())
  expected = keras_epi.select_channels(
      model, keras_epi.magnitude_importance(model, [
          g for g in keras_epi.channel_groups(model) if g.name in cb.keep]),
      0.5)
  assert {k: v.tolist() for k, v in cb.keep.items()} == {
      k: v.tolist() for k, v in expected.items()}


def test_non_finite_scores_never_make_a_plan():
  model = make_model()
  scores = {g.name: np.ones(g.size) for g in keras_epi.channel_groups(model)}
  scores["c1"][3] = np.nan
  with pytest.raises(ValueError, match=r"`scores\['c1'\]` has NaN values "
                     r"at channels \[3\]"):
    keras_epi.select_channels(model, scores, 0.5)
