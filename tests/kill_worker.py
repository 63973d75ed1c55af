"""A tiny EPI run that kills itself at a chosen point, for tests/kill_test.py.

  python -m tests.kill_worker DIR RUNNER [KILL_AT]

trains the small residual CNN of tests/helpers.py for 5 epochs with
an EPICallback that prunes after 2 dense epochs and a
`keras.callbacks.BackupAndRestore(DIR/backup)`, through RUNNER ("fit":
`keras_epi.fit`; "model.fit": plain `model.fit`, masking). KILL_AT sends the
process SIGKILL:
  "E:B"      at the end of train batch B of epoch E;
  "cut"      right after the run state with the plan is written (the
             pruned weights are not yet);
  "weights"  right after the pruned weights are written at the cut;
  "state"    right after the run state that names them is written;
  "removed"  right after the state that records the dense checkpoint
             removed is written.
A run that ends writes DIR/final.npz: the final model's weights and the
optimizer's step counter.
"""

import os
import signal
import sys

import keras
import numpy as np

import keras_epi
from keras_epi import state as state_lib
from tests.helpers import make_data
from tests.helpers import make_model

EPOCHS = 5
PRUNE_EPOCH = 2


def _kill():
  sys.stdout.flush()
  os.kill(os.getpid(), signal.SIGKILL)


class _KillAt(keras.callbacks.Callback):

  def __init__(self, epoch, batch):
    super().__init__()
    self.target = (epoch, batch)
    self.epoch = None

  def on_epoch_begin(self, epoch, logs=None):
    self.epoch = epoch

  def on_train_batch_end(self, batch, logs=None):
    if (self.epoch, batch) == self.target:
      _kill()


def _kill_after(owner, name, when=lambda *args: True):
  original = getattr(owner, name)

  def wrapped(*args, **kwargs):
    result = original(*args, **kwargs)
    if when(*args):
      _kill()
    return result
  setattr(owner, name, wrapped)


def main(directory, runner, kill_at=None):
  if keras.backend.backend() == "tensorflow":
    import tensorflow as tf  # pylint: disable=g-import-not-at-top
    tf.config.experimental.enable_op_determinism()
  model = make_model()
  x, y = make_data(128)  # 4 batches of 32
  backup = os.path.join(directory, "backup")
  callbacks = [keras_epi.EPICallback(prune_ratio=0.5, policy="fixed",
                                     prune_epoch=PRUNE_EPOCH,
                                     backup_dir=backup),
               keras.callbacks.BackupAndRestore(backup)]
  if kill_at == "weights":
    _kill_after(state_lib.StateFile, "save_weights")
  elif kill_at == "cut":
    _kill_after(state_lib.StateFile, "save",
                lambda _, state: state.prune is not None)
  elif kill_at == "state":
    _kill_after(state_lib.StateFile, "save",
                lambda _, state: state.prune and state.prune["weights"])
  elif kill_at == "removed":
    _kill_after(state_lib.StateFile, "save",
                lambda _, state: state.prune and
                state.prune["dense_checkpoint_removed"])
  elif kill_at:
    callbacks.append(_KillAt(*map(int, kill_at.split(":"))))
  # A learning rate that changes every epoch, as the restarted run must
  # train each epoch at the rate of the uninterrupted one.
  callbacks.append(keras.callbacks.LearningRateScheduler(
      lambda epoch, lr: 0.05 * 0.7 ** epoch))
  fit_args = dict(epochs=EPOCHS, batch_size=32, shuffle=False, verbose=0,
                  callbacks=callbacks)
  if runner == "fit":
    final, _ = keras_epi.fit(model, x, y, **fit_args)
    optimizer = final.optimizer
  else:
    model.fit(x, y, **fit_args)
    final, optimizer = callbacks[0].pruned_model, model.optimizer
  np.savez(os.path.join(directory, "final.npz"),
           iterations=keras.ops.convert_to_numpy(optimizer.iterations),
           learning_rate=keras.ops.convert_to_numpy(optimizer.learning_rate),
           prune_epoch=callbacks[0].prune_epoch,
           **{f"w{i}": w for i, w in enumerate(final.get_weights())})


if __name__ == "__main__":
  main(*sys.argv[1:])
