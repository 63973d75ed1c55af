"""The run state of an EPI run, written atomically beside the checkpoint.

`RunState` is everything `EPICallback` decided (the per-epoch record of the
dominant sub-network, the trigger's state, and once pruned: when, why and
the plan) as plain JSON data. `StateFile` writes it to
``{backup_dir}/keras_epi_state.json`` by write-then-rename, so a process
killed at any instant leaves either the old file or the new one. When
`keras_epi.fit` cuts the model it also writes the pruned model's trained
weights and optimizer variables (``keras_epi_pruned.npz``, also atomically,
and before the state that names it), so that a restart after the prune
finds the pruned architecture (rebuilt from the plan) *and* its training,
with the right step counter, even before any checkpoint of the pruned model
exists.
"""

import dataclasses
import io
import json
import os
import warnings

from absl import logging
import keras
import numpy as np

from keras_epi import _backend as backend

STATE_FILE = "keras_epi_state.json"
WEIGHTS_FILE = "keras_epi_pruned.npz"
VERSION = 2
# Trigger states kept for the latest epochs: a checkpoint saved after the
# state (callback order) is at most one epoch behind it.
_SNAPSHOTS = 2


@dataclasses.dataclass
class RunState:
  """What an EPI run has decided so far.

  Attributes:
    fingerprint: The model and its groups ({"model": name, "groups":
      [[name, size], ...]}), to recognise a file of another run.
    epochs_done: Epochs whose end the callback has seen.
    history: Per scored epoch {"epoch", "widths", "epi", "logs"}.
    trigger: {str(epochs_done): trigger state} for the latest epochs.
    prune: None, or {"epoch": dense epochs before the prune, "reason",
      "keep": {group: indices}, "weights": the pruned weights' file name or
      None, "handoff": bool, "dense_checkpoint_removed": bool, "logs": the
      values logged for every epoch after the prune}.
  """
  fingerprint: dict
  epochs_done: int = 0
  history: list = dataclasses.field(default_factory=list)
  trigger: dict = dataclasses.field(default_factory=dict)
  prune: dict = None

  def to_json(self):
    return {"version": VERSION, **dataclasses.asdict(self)}

  @classmethod
  def from_json(cls, data):
    if data.get("version") != VERSION:
      raise ValueError(f"version {data.get('version')!r}, this keras_epi "
                       f"reads version {VERSION}")
    return cls(**{f.name: data[f.name] for f in dataclasses.fields(cls)})

  @property
  def keep(self):
    """The prune plan with NumPy indices, or None before the prune."""
    if self.prune is None:
      return None
    return {k: np.asarray(v, dtype=np.int64)
            for k, v in self.prune["keep"].items()}

  @property
  def prune_epoch(self):
    return self.prune["epoch"] if self.prune else None

  @property
  def prune_reason(self):
    return self.prune["reason"] if self.prune else None

  @property
  def widths(self):
    """{group: kept width} of each scored epoch's dominant sub-network."""
    return [h["widths"] for h in self.history]

  @property
  def epi(self):
    """EPI of each scored epoch (None where undefined)."""
    return [h["epi"] for h in self.history]

  def record_prune(self, epoch, reason, keep, handoff):
    """The prune: after `epoch` dense epochs, for `reason`, plan `keep`;
    `handoff`: keras_epi.fit trains the cut model on (else the dense model
    is masked). Its pruned weights are not written yet."""
    self.prune = {
        "epoch": epoch, "reason": reason,
        "keep": {k: np.asarray(v).tolist() for k, v in keep.items()},
        "weights": None, "handoff": handoff,
        "dense_checkpoint_removed": False, "logs": {}}

  def record_epoch(self, epoch, record, trigger_state):
    """Adds the record of `epoch` (None: no finite scores) and the trigger's
    state after it; keeps the trigger states of the latest epochs only."""
    self.epochs_done = epoch + 1
    if record is not None:
      self.history.append({"epoch": epoch, **record})
    self.trigger[str(self.epochs_done)] = trigger_state
    for key in sorted(self.trigger, key=int)[:-_SNAPSHOTS]:
      del self.trigger[key]

  def rewind(self, epochs_done):
    """The state as it was after `epochs_done` epochs, or None if that
    cannot be recovered (its trigger state is no longer kept)."""
    if epochs_done != 0 and str(epochs_done) not in self.trigger:
      return None
    return RunState(
        fingerprint=self.fingerprint, epochs_done=epochs_done,
        history=[h for h in self.history if h["epoch"] < epochs_done],
        trigger={k: v for k, v in self.trigger.items()
                 if int(k) == epochs_done},
        prune=self.prune if self.prune and
        self.prune["epoch"] <= epochs_done else None)


def resume_at(saved, epochs_done, directory):
  """`saved` as it was after `epochs_done` epochs, the epoch training
  restarts at (from the restored checkpoint); None to start afresh. Says
  where the state and the checkpoint disagree."""
  if saved.epochs_done < epochs_done:
    warnings.warn(
        f"EPICallback: the run state in {directory} is from epoch "
        f"{saved.epochs_done}, the checkpoint from epoch {epochs_done} (was "
        "the EPICallback after BackupAndRestore in `callbacks`?); the EPI "
        "record misses the epochs between.", UserWarning, stacklevel=4)
    return saved
  state = saved.rewind(epochs_done)
  if state is None:
    warnings.warn(
        f"EPICallback: the run state in {directory} was saved after epoch "
        f"{saved.epochs_done} but training restarts at epoch {epochs_done}, "
        "whose state is no longer kept (was the checkpoint restored from "
        "elsewhere?). EPI starts its record afresh here.", UserWarning,
        stacklevel=4)
  elif saved.epochs_done > epochs_done:
    logging.info("EPICallback: the checkpoint is from epoch %d and the run "
                 "state from epoch %d (%s): the state is taken back to the "
                 "checkpoint's epoch.", epochs_done, saved.epochs_done,
                 "no checkpoint: a new run" if epochs_done == 0 else
                 "killed between the two writes")
  return state


def fingerprint(model, analysis):
  """What identifies a run's model: its name and its groups' names and
  sizes."""
  return {"model": model.name,
          "groups": [[g.name, g.size] for g in analysis.groups]}


class StateFile:
  """`RunState` (and the pruned weights) in a directory."""

  def __init__(self, directory):
    self.directory = os.fspath(directory)
    self.path = os.path.join(self.directory, STATE_FILE)
    self.weights_path = os.path.join(self.directory, WEIGHTS_FILE)

  def exists(self):
    return backend.exists(self.path)

  def load(self):
    """The saved `RunState`, or None; a ValueError for an unreadable one."""
    if not backend.exists(self.path):
      return None
    try:
      with backend.open_file(self.path) as f:
        return RunState.from_json(json.load(f))
    except (ValueError, KeyError, TypeError) as e:
      raise ValueError(
          f"EPICallback: cannot read the run state {self.path} ({e}). It is "
          "not from this version of keras_epi or is damaged: delete it to "
          "start the run afresh (and the BackupAndRestore checkpoint beside "
          "it), or pass another `backup_dir`.") from e

  def load_for(self, model, analysis):
    """`load`, or None with a warning where the state is of another model
    (another `fingerprint`): it is then overwritten by this run."""
    saved = self.load()
    if saved is not None and saved.fingerprint["groups"] != fingerprint(
        model, analysis)["groups"]:
      warnings.warn(
          f"EPICallback: the run state in {self.directory} is of another "
          f"model (saved for model '{saved.fingerprint.get('model')}' with "
          f"{len(saved.fingerprint['groups'])} channel groups; "
          f"'{model.name}' has other groups or sizes); it is ignored and "
          "will be overwritten. Use another `backup_dir` to keep it.",
          UserWarning, stacklevel=3)
      return None
    return saved

  def save(self, state):
    _write_atomically(self.path, json.dumps(state.to_json()).encode())

  def delete(self):
    for path in (self.path, self.weights_path):
      if backend.exists(path):
        backend.remove(path)

  def save_weights(self, model):
    """The model's weights and its optimizer's variables, atomically."""
    arrays = {f"w{i}": keras.ops.convert_to_numpy(v)
              for i, v in enumerate(model.weights)}
    if getattr(model, "optimizer", None) is not None:
      arrays.update({f"o{i}": keras.ops.convert_to_numpy(v)
                     for i, v in enumerate(model.optimizer.variables)})
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    _write_atomically(self.weights_path, buffer.getvalue())
    return WEIGHTS_FILE

  def load_weights(self, model):
    """Restores `save_weights` into `model` (same architecture, compiled
    with an optimizer built on its variables)."""
    with backend.open_file(self.weights_path, "rb") as f:
      arrays = np.load(io.BytesIO(f.read()))
      variables = [("w", v) for v in model.weights] + [
          ("o", v) for v in model.optimizer.variables]
      counts = {"w": 0, "o": 0}
      for kind, variable in variables:
        key = f"{kind}{counts[kind]}"
        counts[kind] += 1
        if key not in arrays or arrays[key].shape != tuple(variable.shape):
          raise ValueError(
              f"EPICallback: the pruned weights {self.weights_path} do not "
              f"fit the model rebuilt from the plan (variable "
              f"{variable.path}). Delete {self.directory} to start afresh.")
        variable.assign(arrays[key])
      if len(arrays.files) != sum(counts.values()):
        raise ValueError(
            f"EPICallback: the pruned weights {self.weights_path} hold "
            f"{len(arrays.files)} arrays, the rebuilt model "
            f"{sum(counts.values())}. Delete {self.directory} to start "
            "afresh.")


def _write_atomically(path, data):
  backend.makedirs(os.path.dirname(path) or ".")
  tmp = f"{path}.tmp{os.getpid()}"
  try:
    with backend.open_file(tmp, "wb") as f:
      f.write(data)
    backend.rename(tmp, path)
  except BaseException:  # a full disk, an interrupt: no .tmp left behind
    if backend.exists(tmp):
      backend.remove(tmp)
    raise
