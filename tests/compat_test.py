"""EPICallback beside the callbacks and optimizers people combine it with,
in plain `model.fit` (masking) and in `keras_epi.fit` (the pruned model).

What happens across the prune, for each:
* ModelCheckpoint saves every epoch, the dense model before the prune and, in
  keras_epi.fit, the pruned model after it; each file reloads to its model.
* EarlyStopping / ReduceLROnPlateau: in keras_epi.fit they start afresh at the
  prune (a new fit: the prune changes the loss, so a plateau before it says
  nothing about after), and `restore_best_weights` restores the best epoch
  after the prune. The learning rate they set is carried over. In model.fit
  they span the run; where EarlyStopping restores weights from before the
  prune, EPICallback warns and `pruned_model` is the cut of those weights.
* LearningRateScheduler sees the run's epoch numbers in both.
* TensorBoard and CSVLogger get the ``epi`` values of every epoch.
* TerminateOnNaN stops the run; nothing is pruned or left installed.
* Optimizers with ``use_ema`` and `LossScaleOptimizer`: the masked model
  equals the pruned one; the skipped steps are counted.
"""

import glob
import os

import keras
import numpy as np
import pytest

import keras_epi
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

RUNNERS = ("model.fit", "keras_epi.fit")


def _fit(runner, model, x, y, cb, others, epochs=4, **kwargs):
  """Returns (final model, History, the EPICallback)."""
  callbacks = [cb] + list(others)
  args = dict(epochs=epochs, batch_size=32, shuffle=False, verbose=0,
              callbacks=callbacks, **kwargs)
  if runner == "keras_epi.fit":
    final, history = keras_epi.fit(model, x, y, **args)
    return final, history
  history = model.fit(x, y, **args)
  return model, history


def _fixed(epoch=2):
  return keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                               prune_epoch=epoch)


class _Record(keras.callbacks.Callback):
  """Weights, learning rate and an injected score at every epoch's end."""

  def __init__(self, scores=None):
    super().__init__()
    self.weights, self.lr, self.scores = [], [], scores

  def on_epoch_end(self, epoch, logs=None):
    if self.scores is not None:
      logs["score"] = self.scores[epoch]
    self.weights.append(self.model.get_weights())
    self.lr.append(float(keras.ops.convert_to_numpy(
        self.model.optimizer.learning_rate)))


@pytest.mark.parametrize("runner", RUNNERS)
def test_model_checkpoint_saves_both_sides_of_the_prune(tmp_path, runner):
  x, y = make_data(64)
  cb = _fixed()
  path = str(tmp_path / "ckpt_{epoch}.keras")
  final, _ = _fit(runner, make_model(), x, y, cb,
                  [keras.callbacks.ModelCheckpoint(path)])
  files = sorted(glob.glob(str(tmp_path / "ckpt_*.keras")))
  assert [os.path.basename(f) for f in files] == [
      f"ckpt_{e}.keras" for e in (1, 2, 3, 4)]
  last = keras.saving.load_model(files[-1])
  np.testing.assert_allclose(last.predict(x, verbose=0),
                             final.predict(x, verbose=0), atol=1e-6)
  widths = [keras.saving.load_model(f).get_layer("c1").filters for f in files]
  pruned_width = cb.keep["c1"].size
  if runner == "keras_epi.fit":
    assert widths == [16, 16, pruned_width, pruned_width]
  else:  # the masked model keeps its shapes
    assert widths == [16] * 4
    np.testing.assert_allclose(cb.pruned_model.predict(x, verbose=0),
                               final.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("runner", RUNNERS)
def test_early_stopping_restores_the_best_epoch(runner):
  x, y = make_data(64)
  cb = _fixed()  # prunes at the end of epoch 1
  record = _Record(scores=[1.0, 3.0, 2.0, 2.5])  # best: 0, after the prune 2
  stop = keras.callbacks.EarlyStopping(
      monitor="score", mode="min", patience=10, restore_best_weights=True)
  model = make_model()
  if runner == "keras_epi.fit":
    final, _ = _fit(runner, model, x, y, cb, [record, stop])
    assert final is cb.pruned_model
    best = record.weights[2]  # the best epoch after the prune
    for a, b in zip(final.get_weights(), best):
      np.testing.assert_array_equal(a, b)
  else:
    with pytest.warns(UserWarning, match="restore_best_weights"):
      final, _ = _fit(runner, model, x, y, cb, [record, stop])
      pruned = cb.pruned_model
    for a, b in zip(final.get_weights(), record.weights[0]):
      np.testing.assert_array_equal(a, b)  # the dense epoch 0, as asked
    expected = keras_epi.prune_model(final, cb.keep)
    for a, b in zip(pruned.get_weights(), expected.get_weights()):
      np.testing.assert_array_equal(a, b)


def test_early_stopping_after_the_prune_in_model_fit_keeps_masked_equal_pruned():
  x, y = make_data(64)
  cb = _fixed(1)
  record = _Record(scores=[5.0, 3.0, 1.0, 2.0])  # best after the prune
  stop = keras.callbacks.EarlyStopping(
      monitor="score", mode="min", patience=10, restore_best_weights=True)
  model = make_model()
  model.fit(x, y, epochs=4, batch_size=32, verbose=0,
            callbacks=[cb, record, stop])
  np.testing.assert_allclose(cb.pruned_model.predict(x, verbose=0),
                             model.predict(x, verbose=0), atol=1e-5)


@pytest.mark.parametrize("runner", RUNNERS)
def test_reduce_lr_on_plateau_rate_is_carried_across_the_prune(runner):
  x, y = make_data(64)
  record = _Record()
  reduce = keras.callbacks.ReduceLROnPlateau(monitor="loss", factor=0.5,
                                             patience=0, min_delta=1e9)
  final, _ = _fit(runner, make_model(), x, y, _fixed(), [record, reduce])
  # Every epoch but a fit's first is a plateau (min_delta is huge); in
  # keras_epi.fit the pruned fit is a new fit, starting at the rate the
  # dense one reached.
  if runner == "model.fit":
    expected, final_expected = [0.05, 0.05, 0.025, 0.0125], 0.00625
  else:
    expected, final_expected = [0.05, 0.05, 0.025, 0.025], 0.0125
  assert record.lr == pytest.approx(expected)
  final_lr = float(keras.ops.convert_to_numpy(final.optimizer.learning_rate))
  assert final_lr == pytest.approx(final_expected)


@pytest.mark.parametrize("runner", RUNNERS)
def test_learning_rate_scheduler_sees_the_run_epochs(runner):
  x, y = make_data(64)
  record = _Record()
  schedule = keras.callbacks.LearningRateScheduler(
      lambda epoch, lr: 0.1 / (epoch + 1))
  _fit(runner, make_model(), x, y, _fixed(), [record, schedule])
  assert record.lr == pytest.approx([0.1 / (e + 1) for e in range(4)])


@pytest.mark.parametrize("runner", RUNNERS)
def test_tensorboard_gets_the_epi_values_of_every_epoch(tmp_path, runner):
  x, y = make_data(64)
  _fit(runner, make_model(), x, y, _fixed(),
       [keras.callbacks.TensorBoard(str(tmp_path))])
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  # (TensorBoard's event files, read with TensorFlow on any backend)
  steps = {}
  for path in glob.glob(str(tmp_path / "train" / "*")):
    for event in tf.compat.v1.train.summary_iterator(path):
      for value in event.summary.value:
        steps.setdefault(value.tag, set()).add(event.step)
  assert steps["epoch_kept_fraction"] == {0, 1, 2, 3}
  assert steps["epoch_epi"] == {0, 1, 2, 3}


@pytest.mark.parametrize("runner", RUNNERS)
def test_terminate_on_nan_stops_before_anything_is_pruned(runner):
  x, y = make_data(64)
  # A NaN loss from the first batch on, on every backend (NaN inputs are
  # not: XLA's max(NaN, 0) in a jitted ReLU is 0).
  weights = np.full(len(x), np.nan, "float32")
  cb = _fixed()
  model = make_model()
  final, history = _fit(runner, model, x, y, cb,
                        [keras.callbacks.TerminateOnNaN()],
                        sample_weight=weights)
  assert final is model and len(history.epoch) == 1
  assert cb.prune_epoch is None and cb.pruned_model is None
  assert "apply" not in vars(model.optimizer)


@pytest.mark.parametrize("runner", RUNNERS)
def test_ema_optimizer(runner):
  x, y = make_data(64)
  cb = _fixed(1)
  model = make_model(optimizer=keras.optimizers.Adam(1e-2, use_ema=True))
  final, _ = _fit(runner, model, x, y, cb, [])
  if runner == "keras_epi.fit":
    width = final.get_layer("c1").filters
    averages = [v for v in final.optimizer.variables
                if v.name.startswith("c1_kernel") and "average" in v.name]
    assert averages and all(v.shape[-1] == width for v in averages)
  else:  # fit ends by copying the averages into the model: still masked
    np.testing.assert_allclose(cb.pruned_model.predict(x, verbose=0),
                               model.predict(x, verbose=0), atol=1e-5)


def test_loss_scale_skipped_steps_are_counted():
  model = make_model(optimizer=keras.optimizers.LossScaleOptimizer(
      keras.optimizers.SGD(0.05)))
  x, y = make_data(64)  # 2 steps per epoch
  x[:32] = np.nan  # the first batch of every epoch is skipped
  cb = _fixed(2)
  model.fit(x, y, epochs=3, batch_size=32, shuffle=False, verbose=0,
            callbacks=[cb])
  assert cb.prune_epoch == 2
  assert cb.skipped_batches == 2  # one per scored epoch
