"""Tests of keras_epi.fit: training continues on the pruned model."""

import csv

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import training
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def test_fit_continues_on_the_pruned_model_with_one_history():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, budget="macs", window=2,
                             threshold=0.9)

  final, history = keras_epi.fit(model, x, y, epochs=8, batch_size=32,
                                 verbose=0, callbacks=[cb])

  assert final is cb.pruned_model and final is not model
  assert history.epoch == list(range(8))
  assert all(len(v) == 8 for v in history.history.values())
  ratio = keras_epi.count_macs(final) / keras_epi.count_macs(model)
  assert 0.44 <= ratio <= 0.5  # one c1 channel is 6% of the MACs
  assert int(keras.ops.convert_to_numpy(final.optimizer.iterations)) == 8 * 8  # 8 steps/epoch
  # It learned on: the last epoch's loss is below the first's.
  assert history.history["loss"][-1] < history.history["loss"][0]
  assert final.evaluate(x, y, verbose=0)[1] > 0.7


def test_no_trigger_returns_the_dense_model():
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, window=5)
  final, history = keras_epi.fit(model, x, y, epochs=2, verbose=0,
                                 callbacks=[cb])
  assert final is model and cb.prune_epoch is None
  assert history.epoch == [0, 1]


@pytest.mark.parametrize("optimizer", [
    lambda: keras.optimizers.SGD(0.05, momentum=0.9),
    lambda: keras.optimizers.Adam(1e-3),
    lambda: keras.optimizers.AdamW(keras.optimizers.schedules.CosineDecay(
        1e-3, 100)),
])
def test_optimizer_slots_are_sliced_and_the_step_continues(optimizer):
  model = make_model(optimizer=optimizer())
  x, y = make_data(64)
  model.fit(x, y, epochs=1, batch_size=32, verbose=0)
  keep = {"c1": np.array([0, 3, 5, 9]), "c2": np.arange(0, 16, 2)}
  pruned, surgeon = keras_epi.surgeon.prune_with_surgeon(model, keep)

  training.compile_like(model, pruned, surgeon)

  old = {v.name: keras.ops.convert_to_numpy(v)
         for v in model.optimizer.variables}
  new = {v.name: keras.ops.convert_to_numpy(v)
         for v in pruned.optimizer.variables}
  assert set(old) == set(new)
  slots = [n for n in old if n.startswith("c1_kernel_")]
  assert slots
  for name in slots:  # c1's kernel: out channels cut
    np.testing.assert_array_equal(new[name], old[name][..., keep["c1"]])
  for name in [n for n in old if n.startswith("c2_kernel_")]:
    np.testing.assert_array_equal(  # c2 reads c1: both axes cut
        new[name], old[name][:, :, keep["c1"]][..., keep["c2"]])
  assert int(keras.ops.convert_to_numpy(pruned.optimizer.iterations)) == 2
  lr = pruned.optimizer.learning_rate
  np.testing.assert_allclose(keras.ops.convert_to_numpy(lr),
                             keras.ops.convert_to_numpy(
                                 model.optimizer.learning_rate))


def test_resume_after_the_prune_continues_on_the_pruned_model(tmp_path):
  x, y = make_data()
  backup = str(tmp_path / "backup")

  class Interrupt(keras.callbacks.Callback):

    def on_epoch_end(self, epoch, logs=None):
      if epoch == 3:
        raise RuntimeError("preempted")

  def epi():
    return keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                                 prune_epoch=2)

  cb = epi()
  with pytest.raises(RuntimeError, match="preempted"):
    keras_epi.fit(make_model(), x, y, epochs=6, batch_size=32, verbose=0,
                  callbacks=[cb, keras.callbacks.BackupAndRestore(backup),
                             Interrupt()])
  widths = cb.pruned_model.get_layer("c1").filters

  resumed = epi()
  final, history = keras_epi.fit(
      make_model(seed=3), x, y, epochs=6, batch_size=32, verbose=0,
      callbacks=[resumed, keras.callbacks.BackupAndRestore(backup)])

  assert resumed.prune_epoch == 2
  assert final.get_layer("c1").filters == widths
  assert history.epoch == [4, 5]  # epochs 0-3 were done before the crash
  np.testing.assert_array_equal(resumed.keep["c1"], cb.keep["c1"])


def test_fit_argument_errors():
  model = make_model()
  x, y = make_data(32)
  with pytest.raises(ValueError, match="exactly one EPICallback"):
    keras_epi.fit(model, x, y, callbacks=[])
  with pytest.raises(ValueError, match="exactly one EPICallback"):
    keras_epi.fit(model, x, y, callbacks=[keras_epi.EPICallback(),
                                          keras_epi.EPICallback()])
  uncompiled = keras.Sequential([keras.Input((4,)), keras.layers.Dense(3),
                                 keras.layers.Dense(2)])
  with pytest.raises(ValueError, match="compiled model"):
    keras_epi.fit(uncompiled, x, y, callbacks=[keras_epi.EPICallback()])


def test_gradient_accumulation_carries_the_step_and_the_accumulators():
  model = make_model(optimizer=keras.optimizers.Adam(
      1e-3, gradient_accumulation_steps=2))
  x, y = make_data()  # 8 steps per epoch
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  final, history = keras_epi.fit(model, x, y, epochs=3, batch_size=32,
                                 verbose=0, callbacks=[cb])
  assert final is cb.pruned_model and history.epoch == [0, 1, 2]
  # 24 train steps, one update every 2 of them.
  assert int(keras.ops.convert_to_numpy(final.optimizer.iterations)) == 12
  width = final.get_layer("c1").filters
  accumulators = [v for v in final.optimizer.variables
                  if v.name.startswith("c1_kernel_gradient_accumulator")]
  assert accumulators and accumulators[0].shape[-1] == width


@pytest.mark.parametrize("delete_checkpoint", [True, False])
def test_backup_and_restore_keeps_or_deletes_its_checkpoint(
    tmp_path, delete_checkpoint):
  model = make_model()
  x, y = make_data(64)
  backup = str(tmp_path / "backup")
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  final, history = keras_epi.fit(
      model, x, y, epochs=3, batch_size=32, verbose=0, callbacks=[
          cb, keras.callbacks.BackupAndRestore(
              backup, delete_checkpoint=delete_checkpoint)])
  assert history.epoch == [0, 1, 2] and final.get_layer("c1").filters < 16
  assert int(keras.ops.convert_to_numpy(final.optimizer.iterations)) == 3 * 2
  if not delete_checkpoint:  # the checkpoint left is the pruned model's
    restored = keras_epi.prune_model(make_model(seed=4), cb.keep)
    restored.load_weights(str(tmp_path / "backup" / "latest.weights.h5"))
    for a, b in zip(restored.get_weights(), final.get_weights()):
      np.testing.assert_array_equal(a, b)


def test_csv_logger_has_every_epoch_with_the_epi_columns(tmp_path):
  model = make_model()
  x, y = make_data(64)
  path = str(tmp_path / "log.csv")
  cb = keras_epi.EPICallback(prune_ratio=0.5, window=1, threshold=0.5,
                             prune_by=2)
  # The CSVLogger first: it must still see the values EPICallback adds.
  keras_epi.fit(model, x, y, epochs=4, batch_size=32, verbose=0,
                callbacks=[keras.callbacks.CSVLogger(path), cb])
  with open(path) as f:
    rows = list(csv.DictReader(f))
  assert cb.prune_epoch is not None and 1 <= cb.prune_epoch < 4
  assert [int(r["epoch"]) for r in rows] == [0, 1, 2, 3]
  assert all(r["epi"] not in ("", "NA") for r in rows)
  assert all(r["kept_fraction"] not in ("", "NA") for r in rows)
