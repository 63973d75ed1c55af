"""Tests of keras_epi.state and of EPICallback's use of it: stale files,
a state ahead of or behind the checkpoint, the atomic pruned weights."""

import json
import os

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import state as state_lib
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def _state(epochs):
  state = state_lib.RunState({"model": "m", "groups": [["a", 4]]})
  for e in range(epochs):
    state.record_epoch(e, {"widths": {"a": 4 - e % 2}, "epi": None,
                           "logs": {"epi": 0.0}}, {"after": e + 1})
  return state


def test_record_keeps_the_latest_trigger_states_and_rewinds():
  state = _state(5)
  assert state.epochs_done == 5 and sorted(state.trigger) == ["4", "5"]
  back = state.rewind(4)
  assert back.epochs_done == 4 and len(back.history) == 4
  assert back.trigger == {"4": {"after": 4}}
  assert state.rewind(3) is None  # its trigger state is gone
  assert state.rewind(0).history == []
  state.prune = {"epoch": 5, "keep": {"a": [0, 1]}}
  assert state.rewind(4).prune is None and state.rewind(5).prune


def test_state_file_round_trip_and_unreadable_files(tmp_path):
  files = state_lib.StateFile(tmp_path)
  assert files.load() is None
  state = _state(2)
  files.save(state)
  assert files.load() == state
  assert [p.name for p in tmp_path.iterdir()] == [state_lib.STATE_FILE]
  (tmp_path / state_lib.STATE_FILE).write_text(json.dumps({"version": 1}))
  with pytest.raises(ValueError, match="cannot read the run state .* delete "
                     "it to start the run afresh"):
    files.load()


def test_pruned_weights_round_trip_and_refuse_another_model(tmp_path):
  files = state_lib.StateFile(tmp_path)
  model = make_model()
  model.fit(*make_data(32), epochs=1, verbose=0)
  files.save_weights(model)
  twin = make_model(seed=3)
  twin.optimizer.build(twin.trainable_variables)
  files.load_weights(twin)
  for a, b in zip(model.weights + model.optimizer.variables,
                  twin.weights + twin.optimizer.variables):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(a), keras.ops.convert_to_numpy(b))
  other = keras_epi.prune_model(make_model(), {"c1": np.arange(8)})
  other.compile(optimizer=keras.optimizers.SGD(0.05, momentum=0.9))
  other.optimizer.build(other.trainable_variables)
  with pytest.raises(ValueError, match="do not fit the model rebuilt"):
    files.load_weights(other)


def test_a_state_of_another_model_is_set_aside_with_a_warning(tmp_path):
  backup = str(tmp_path / "backup")
  x, y = make_data(64)
  state_lib.StateFile(backup).save(_state(3))
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             backup_dir=backup)
  with pytest.warns(UserWarning, match="is of another model"):
    make_model().fit(x, y, epochs=2, batch_size=32, verbose=0,
                     callbacks=[cb])
  assert cb.prune_epoch == 1  # a run of its own
  assert state_lib.StateFile(backup).load().fingerprint["groups"][0][0] == \
      "stem"


def test_a_finished_run_is_not_resumed_by_the_next(tmp_path):
  # BackupAndRestore deletes its checkpoint at the end; the state of the
  # finished run, in another directory, is then ahead of the (absent)
  # checkpoint: the next run starts afresh instead of masking epoch 0.
  backup, states = str(tmp_path / "backup"), str(tmp_path / "states")
  x, y = make_data(64)

  def run():
    cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                               prune_epoch=2, backup_dir=states)
    history = make_model().fit(
        x, y, epochs=3, batch_size=32, verbose=0,
        callbacks=[cb, keras.callbacks.BackupAndRestore(backup)])
    return cb, history

  first, _ = run()
  assert not os.path.exists(backup)
  second, history = run()
  assert history.epoch == [0, 1, 2] and second.prune_epoch == 2
  assert second.width_history == first.width_history


def test_a_state_behind_the_checkpoint_is_said(tmp_path):
  backup = str(tmp_path / "backup")
  x, y = make_data(64)

  class Interrupt(keras.callbacks.Callback):

    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:
        raise RuntimeError("preempted")

  def epi():
    return keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                                 prune_epoch=3, backup_dir=backup)

  # BackupAndRestore before the EPICallback, and an interrupt between
  # their epoch ends: the checkpoint has epoch 1, the state only epoch 0.
  with pytest.raises(RuntimeError):
    make_model().fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[
        keras.callbacks.BackupAndRestore(backup), Interrupt(), epi()])
  resumed = epi()
  with pytest.warns(UserWarning, match="misses the epochs between"):
    history = make_model().fit(
        x, y, epochs=4, batch_size=32, verbose=0,
        callbacks=[keras.callbacks.BackupAndRestore(backup), resumed])
  assert history.epoch == [2, 3] and resumed.prune_epoch == 3
