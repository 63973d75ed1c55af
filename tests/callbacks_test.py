"""Tests of keras_epi.EPICallback inside plain model.fit."""

import csv

import keras
import numpy as np
import pytest

import keras_epi
from tests import oracle
from tests.helpers import make_data
from tests.helpers import make_model

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def test_fit_logs_epi_fires_and_masked_equals_pruned(tmp_path):
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, window=2, threshold=0.9)
  csv_path = tmp_path / "log.csv"

  history = model.fit(x, y, epochs=8, batch_size=32, verbose=0,
                      callbacks=[cb, keras.callbacks.CSVLogger(csv_path)])

  assert cb.prune_epoch is not None and 2 <= cb.prune_epoch < 8
  assert cb.prune_reason == "epi"
  for key in ("epi", "kept_fraction", "macs_fraction"):
    assert len(history.history[key]) == 8
  with open(csv_path) as f:
    assert {"epi", "kept_fraction", "macs_fraction"} <= set(
        next(csv.reader(f)))
  # EPI is measured from epoch `window` (0-based) until the prune, NaN
  # before (undefined) and after (not measured); never 0.0 for "unknown".
  epi = history.history["epi"]
  assert all(np.isnan(v) for v in epi[:2] + epi[cb.prune_epoch:])
  assert all(0.0 <= v <= 1.0 for v in epi[2:cb.prune_epoch])
  assert epi[cb.prune_epoch - 1] >= 0.9
  assert epi[2:cb.prune_epoch] == cb.epi_history[2:]
  # Neuron budget: half of the prunable channels (the stem stays whole).
  sizes = {g.name: g.size for g in keras_epi.channel_groups(model)}
  kept = sum(len(v) for v in cb.keep.values())
  assert kept == sum(s for n, s in sizes.items() if n != "stem") // 2
  assert "stem" not in cb.keep
  # The model trained on with the channels held at zero: same function.
  x_test = make_data(32, seed=1)[0]
  error = oracle.relative_error(cb.pruned_model.predict(x_test, verbose=0),
                                model.predict(x_test, verbose=0))
  assert error <= 1e-4
  assert keras_epi.count_macs(cb.pruned_model) < keras_epi.count_macs(model)
  assert len(cb.width_history) == cb.prune_epoch
  assert set(cb.importance) == set(sizes) - {"stem"}


def test_removed_channels_and_their_optimizer_slots_stay_exactly_zero():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb])
  removed = np.setdiff1d(np.arange(16), cb.keep["c1"])
  kernel = keras.ops.convert_to_numpy(model.get_layer("c1").kernel)
  gamma = keras.ops.convert_to_numpy(model.get_layer("bn1").gamma)
  assert np.all(kernel[..., removed] == 0) and np.all(gamma[removed] == 0)
  # Every surviving filter still has non-zero weights (the mask spared it).
  kept = kernel[..., cb.keep["c1"]].reshape(-1, len(cb.keep["c1"]))
  assert (np.abs(kept).max(axis=0) > 0).all()
  momentum = [v for v in model.optimizer.variables
              if v.name.startswith("c1_kernel")]
  assert momentum
  assert np.all(keras.ops.convert_to_numpy(momentum[0])[..., removed] == 0)


def test_fixed_policy_prunes_after_the_given_number_of_epochs():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.3, policy="fixed", prune_epoch=2,
                             criterion="magnitude")
  model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 2 and len(cb.width_history) == 2


@pytest.mark.parametrize("criterion", ["magnitude", "taylor"])
def test_prune_at_initialisation(criterion):
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.3, policy="fixed", prune_epoch=0,
                             criterion=criterion, init_steps=3)
  model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 0 and cb.pruned_model is not None
  assert cb.width_history == []


def test_early_bird_policy_fires_on_stable_masks():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="early_bird",
                             early_bird_distance=0.5)
  history = model.fit(x, y, epochs=8, batch_size=32, verbose=0,
                      callbacks=[cb])
  assert cb.prune_epoch is not None and cb.prune_epoch >= 5
  assert "eb_distance" in history.history
  # Undefined until 5 masks exist; the last value is the one that fired.
  distances = cb.early_bird_history
  assert len(distances) == cb.prune_epoch and distances[:4] == [None] * 4
  assert distances[-1] < 0.5
  assert history.history["eb_distance"][cb.prune_epoch - 1] == (
      pytest.approx(distances[-1]))


def test_magnitude_budget_macs_is_met():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, budget="macs", policy="fixed",
                             prune_epoch=1, criterion="magnitude")
  model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
  ratio = keras_epi.count_macs(cb.pruned_model) / keras_epi.count_macs(model)
  assert 0.44 <= ratio <= 0.5  # one c1 channel is 6% of the MACs


def test_prune_by_is_a_deadline_when_the_indicator_never_fires():
  model = make_model()
  x, y = make_data()
  # With window 5, EPI is undefined for the first 5 epochs: it cannot fire.
  cb = keras_epi.EPICallback(prune_ratio=0.5, window=5, prune_by=3)
  model.fit(x, y, epochs=4, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 3 and cb.prune_reason == "deadline"
  assert cb.epi_history[:3] == [None, None, None]
  sizes = {g.name: g.size for g in keras_epi.channel_groups(model)}
  kept = sum(len(v) for v in cb.keep.values())
  assert kept == sum(s for n, s in sizes.items() if n != "stem") // 2
  x_test = make_data(32, seed=1)[0]
  error = oracle.relative_error(cb.pruned_model.predict(x_test, verbose=0),
                                model.predict(x_test, verbose=0))
  assert error <= 1e-4


def test_keep_residual_leaves_the_residual_stream_whole():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             keep_residual=True)
  model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
  pruned = cb.pruned_model
  for name in ("c2", "short"):  # the stream: c2 + short
    assert pruned.get_layer(name).filters == 16
  assert pruned.get_layer("c1").filters == 8  # half of all scored channels


def test_callback_is_reusable_across_fits():
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.3, policy="fixed", prune_epoch=1)
  make_model().fit(x, y, epochs=2, batch_size=64, verbose=0, callbacks=[cb])
  first = cb.pruned_model
  model = make_model(seed=1)
  model.fit(x, y, epochs=1, batch_size=64, verbose=0, callbacks=[cb])
  assert cb.pruned_model is not first and cb.prune_epoch == 1
  assert len(cb.width_history) == 1


def test_optimizer_hook_is_removed_after_fit():
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.3)
  model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
  assert "apply" not in vars(model.optimizer)


def test_mixed_precision_scores_accumulate_in_float32():
  keras.mixed_precision.set_global_policy("mixed_float16")
  try:
    model = make_model()
    x, y = make_data(64)
    cb = keras_epi.EPICallback(prune_ratio=0.3, policy="fixed",
                               prune_epoch=1)
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
  finally:
    keras.mixed_precision.set_global_policy("float32")
  assert cb.pruned_model is not None
  for scores in cb.importance.values():
    assert scores.dtype == np.float64 and np.isfinite(scores).all()
    assert scores.max() > 0
  assert cb.pruned_model.get_layer("c1").dtype_policy.name == "mixed_float16"


def test_resume_with_backup_and_restore(tmp_path):
  x, y = make_data()
  backup = str(tmp_path / "backup")

  class Interrupt(keras.callbacks.Callback):

    def on_epoch_end(self, epoch, logs=None):
      if epoch == 1:
        raise RuntimeError("preempted")

  def epi():
    return keras_epi.EPICallback(prune_ratio=0.5, window=1, policy="fixed",
                                 prune_epoch=4, backup_dir=backup)

  cb = epi()
  with pytest.raises(RuntimeError, match="preempted"):
    make_model().fit(x, y, epochs=6, batch_size=32, verbose=0, callbacks=[
        cb, keras.callbacks.BackupAndRestore(backup), Interrupt()])
  history_before = list(cb.epi_history)

  resumed = epi()
  history = make_model(seed=5).fit(
      x, y, epochs=6, batch_size=32, verbose=0,
      callbacks=[resumed, keras.callbacks.BackupAndRestore(backup)])
  assert len(history.epoch) == 4  # epochs 2..5 ran again
  assert len(history_before) == 2
  assert resumed.epi_history[:2] == history_before
  assert len(resumed.epi_history) == 4 and resumed.prune_epoch == 4


@pytest.mark.parametrize("kwargs, message", [
    (dict(prune_ratio=0), r"`prune_ratio` must be a number in \(0, 1\)"),
    (dict(prune_ratio=1.0), r"`prune_ratio` must be a number in \(0, 1\)"),
    (dict(prune_ratio="0.5"), r"`prune_ratio` must be a number"),
    (dict(budget="flops"), "`budget` must be one of"),
    (dict(criterion="l1"), "`criterion` must be one of"),
    (dict(policy="lottery"), "`policy` must be one of"),
    (dict(window=0), "`window` must be an integer >= 1"),
    (dict(threshold=2.0), r"`threshold` must be a number in \(0, 1\]"),
    (dict(policy="fixed"), "`prune_epoch` must be an integer >= 0"),
    (dict(prune_epoch=3), "`prune_epoch` is only used with policy='fixed'"),
    (dict(prune_by=0), "`prune_by` must be None or an integer >= 1"),
    (dict(policy="fixed", prune_epoch=2, prune_by=3),
     "`prune_by` must be None or an integer >= 1 with policy='epi'"),
    (dict(round_to=0), "`round_to` must be an integer >= 1"),
    (dict(min_channels=0), "`min_channels` must be an integer >= 1"),
    (dict(taylor_reduction="max"), "`taylor_reduction` must be one of"),
    (dict(init_steps=0), "`init_steps` must be an integer >= 1"),
    (dict(ignore="conv"), "`ignore` must be a collection"),
    (dict(gradual_steps=0), "`gradual_steps` must be an integer >= 1"),
])
def test_bad_arguments_are_rejected_at_construction(kwargs, message):
  with pytest.raises(ValueError, match=message):
    keras_epi.EPICallback(**kwargs)


def test_model_without_prunable_groups_is_rejected_at_train_begin():
  model = keras.Sequential([keras.Input((4,)), L.Dense(2)])
  model.compile("sgd", "mse")
  with pytest.raises(ValueError, match="no prunable channel groups"):
    model.fit(np.zeros((4, 4)), np.zeros((4, 2)), verbose=0,
              callbacks=[keras_epi.EPICallback()])


def test_gradual_pruning_removes_channels_in_steps_then_cuts():
  model = make_model()
  x, y = make_data()  # 256 examples, batch 32: 8 steps per epoch
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             gradual_steps=4)
  seen = []

  class Spy(keras.callbacks.Callback):

    def on_train_batch_end(self, batch, logs=None):
      if cb.keep is not None:
        kept = {k: set(v.tolist()) for k, v in cb.keep.items()}
        if not seen or seen[-1] != kept:
          seen.append(kept)

  model.fit(x, y, epochs=3, batch_size=32, verbose=0, callbacks=[cb, Spy()])

  assert cb.prune_epoch == 2  # cut at the end of the epoch after the trigger
  total = [sum(len(v) for v in kept.values()) for kept in seen]
  prunable = sum(g.size for g in keras_epi.channel_groups(model)) - 8
  # Steps 1..3 during epoch 1 remove 1/4, 2/4, 3/4 of the budget; the cut at
  # its end the rest.
  assert total == [prunable - round(prunable * 0.5 * i / 4)
                   for i in (1, 2, 3, 4)]
  for before, after in zip(seen, seen[1:]):  # only ever removes
    assert all(after[k] <= before[k] for k in before)
  assert all(set(cb.keep[k].tolist()) <= seen[-1][k] for k in cb.keep)
  assert sum(len(v) for v in cb.keep.values()) == prunable // 2
  x_test = make_data(32, seed=1)[0]
  assert oracle.relative_error(cb.pruned_model.predict(x_test, verbose=0),
                               model.predict(x_test, verbose=0)) <= 1e-4


def test_gradual_pruning_with_keras_epi_fit():
  model = make_model()
  x, y = make_data()
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             gradual_steps=3)
  final, history = keras_epi.fit(model, x, y, epochs=4, batch_size=32,
                                 verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 2 and history.epoch == [0, 1, 2, 3]
  assert keras_epi.count_macs(final) < keras_epi.count_macs(model)


@pytest.mark.parametrize("kwargs, message", [
    (dict(threshold="0.9"), r"`threshold` must be a number in \(0, 1\]"),
    (dict(window=True), "`window` must be an integer >= 1"),
    (dict(window=2.0), "`window` must be an integer >= 1"),
    (dict(keep_stem="no"), "`keep_stem` must be True or False"),
    (dict(keep_residual=1), "`keep_residual` must be True or False"),
    (dict(prune_frozen="yes"), "`prune_frozen` must be True or False"),
    (dict(backup_dir=123), "`backup_dir` must be None or a directory path"),
    (dict(policy="early_bird", early_bird_distance=0.0),
     r"`early_bird_distance` must be a number in \(0, 1\]"),
    (dict(policy="early_bird", early_bird_distance=1.5),
     r"`early_bird_distance` must be a number in \(0, 1\]"),
    (dict(early_bird_penalty="1e-4"),
     r"`early_bird_penalty` must be a number in \[0, inf\)"),
    (dict(early_bird_penalty=-1.0),
     r"`early_bird_penalty` must be a number in \[0, inf\)"),
    (dict(prune_ratio=True), r"`prune_ratio` must be a number in \(0, 1\)"),
    (dict(min_channels=True), "`min_channels` must be an integer >= 1"),
    (dict(init_steps=2.5), "`init_steps` must be an integer >= 1"),
    (dict(policy="fixed", prune_epoch=1.0),
     "`prune_epoch` must be an integer >= 0"),
    (dict(ignore=[3]), "`ignore` must be a collection of layer names"),
])
def test_wrong_types_are_rejected_with_the_argument_named(kwargs, message):
  with pytest.raises(ValueError, match=message):
    keras_epi.EPICallback(**kwargs)


def test_numpy_scalars_are_accepted_wherever_python_numbers_are():
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(
      prune_ratio=np.float32(0.5), window=np.int64(3),
      threshold=np.float64(0.9), policy="fixed", prune_epoch=np.int64(1),
      min_channels=np.int64(2), round_to=np.int32(2),
      init_steps=np.int64(3), gradual_steps=np.int64(1),
      keep_stem=np.bool_(True), early_bird_penalty=np.float32(1e-4),
      early_bird_distance=np.float32(0.2))
  assert type(cb.prune_ratio) is float and type(cb.window) is int  # pylint: disable=unidiomatic-typecheck
  model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 1
  assert all(len(v) % 2 == 0 for v in cb.keep.values())
  keras_epi.EPICallback(prune_by=np.int64(3))
  keras_epi.EarlyPruningIndicator(window=np.int64(2),
                                  threshold=np.float32(0.9))


def test_min_channels_that_prunes_nothing_is_warned_about():
  model = make_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             min_channels=16)
  with pytest.warns(UserWarning, match="min_channels=16 is at least the "
                    "size of every prunable group"):
    model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])


def test_pruning_at_init_after_more_steps_than_an_epoch_is_refused():
  model = make_model()
  x, y = make_data(64)  # 2 steps per epoch
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=0,
                             init_steps=5)
  with pytest.raises(ValueError, match=r"`init_steps`=5 is longer than an "
                     r"epoch \(2 steps\)"):
    model.fit(x, y, epochs=2, batch_size=32, verbose=0, callbacks=[cb])
  assert "apply" not in vars(model.optimizer)


def test_select_channels_refuses_scores_that_are_not_a_mapping():
  model = make_model()
  scores = [np.ones(g.size) for g in keras_epi.channel_groups(model)]
  with pytest.raises(ValueError, match=r"`scores` must be a mapping "
                     r"\{group name: array"):
    keras_epi.select_channels(model, scores, 0.5)


def _frozen_c1_model():
  model = make_model()
  model.get_layer("c1").trainable = False  # fine-tuning with a frozen layer
  model.compile(keras.optimizers.SGD(0.05, momentum=0.9),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  return model


def test_frozen_layers_are_kept_whole_by_default():
  model = _frozen_c1_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1)
  model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.frozen_groups == ("c1",)
  assert "c1" not in cb.keep and "c1" not in cb.importance
  assert cb.pruned_model.get_layer("c1").filters == 16
  # The budget is met on the trainable groups: half of c2 + short's 16.
  assert sum(len(v) for v in cb.keep.values()) == 8
  np.testing.assert_array_equal(
      keras.ops.convert_to_numpy(cb.pruned_model.get_layer("c1").kernel),
      keras.ops.convert_to_numpy(model.get_layer("c1").kernel))


def test_prune_frozen_prunes_frozen_layers_too():
  model = _frozen_c1_model()
  x, y = make_data(64)
  cb = keras_epi.EPICallback(prune_ratio=0.5, policy="fixed", prune_epoch=1,
                             criterion="magnitude", prune_frozen=True)
  model.fit(x, y, epochs=1, batch_size=32, verbose=0, callbacks=[cb])
  assert cb.frozen_groups == () and "c1" in cb.keep
  assert cb.pruned_model.get_layer("c1").filters < 16
