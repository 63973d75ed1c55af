"""Tests of keras_epi.LatencyTable and the latency budget.

Timings on a shared machine are noise, so no test asserts a measured value:
measured tables are checked for their structure and for identities that hold
whatever the numbers (the dense prediction is the whole-model time, a plan
predicts what the pruned model predicts). Numbers are checked on tables
written by hand, where latency is linear in each width, so bilinear
interpolation is exact and every prediction has a closed form.
"""

import json

import keras
import numpy as np
import pytest

import keras_epi
from keras_epi import latency
from keras_epi import latency_measure

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)

L = keras.layers


def tiny_model(size=8):
  """stem (3 -> 8, residual with c2) -> c1 (8 -> 16) -> depthwise -> c2
  (16 -> 8) -> add -> pool -> fc (8 -> 4)."""
  keras.utils.set_random_seed(0)
  x = keras.Input((size, size, 3))
  h = L.Conv2D(8, 3, padding="same", name="stem")(x)
  h = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(h))
  a = L.Conv2D(16, 3, padding="same", name="c1")(h)
  a = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
  b = L.Conv2D(8, 1, name="c2")(a)
  h = L.Add(name="add")([h, b])
  y = L.Dense(4, name="fc")(L.GlobalAveragePooling2D()(h))
  return keras.Model(x, y)


# Hand-made table: seconds = U * in * out at every measured point (U * in for
# the depthwise layer), plus FIXED. With stem width s and c1 width c the
# model predicts FIXED + U * (3s + sc + c + cs + 4s) = FIXED + U * (7s + 2sc
# + c) exactly, anywhere inside the measured widths.
U = 1e-6
FIXED = 100e-6


def synthetic_table():
  def entry(ins, outs):
    if outs is None:
      return {"in": ins, "out": None, "seconds": [U * a for a in ins]}
    return {"in": ins, "out": outs,
            "seconds": [[U * a * b for b in outs] for a in ins]}
  return keras_epi.LatencyTable({
      "stem": entry([3], [1, 4, 8]),
      "c1": entry([1, 4, 8], [1, 8, 16]),
      "dw": entry([1, 8, 16], None),
      "c2": entry([1, 8, 16], [1, 4, 8]),
      "fc": entry([1, 4, 8], [4]),
  }, fixed=FIXED, metadata={"model": "synthetic"})


def closed_form(s, c):
  return FIXED + U * (7 * s + 2 * s * c + c)


@pytest.fixture(scope="module")
def measured():
  model = tiny_model()
  before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
  table = keras_epi.LatencyTable.measure(model, batch_size=4,
                                         widths=(0.5, 1.0), repeats=2,
                                         warmup=1)
  return model, before, table


# -- measure ------------------------------------------------------------------


def test_measure_has_an_entry_per_counted_layer_and_a_fixed_term(measured):
  model, before, table = measured
  assert set(table.entries) == {"stem", "c1", "dw", "c2", "fc"}
  e = table.entries
  # Model inputs and outputs keep their widths: one point on that axis.
  # Elsewhere: the narrowest width (1), half and full.
  assert e["stem"]["in"] == [3] and e["stem"]["out"] == [1, 4, 8]
  assert e["fc"]["in"] == [1, 4, 8] and e["fc"]["out"] == [4]
  assert e["c1"]["in"] == [1, 4, 8] and e["c1"]["out"] == [1, 8, 16]
  # The depthwise layer's output width follows its input: one axis.
  assert e["dw"]["out"] is None and e["dw"]["seconds"].shape == (3,)
  assert e["c2"]["seconds"].shape == (3, 3)
  # Its BN and ReLU are timed with the stem; nothing simple follows c1.
  assert e["stem"]["followers"] == ["stem_bn", "stem_relu"]
  assert e["c1"]["followers"] == []
  for entry in e.values():
    seconds = entry["seconds"]
    assert np.isfinite(seconds).all() and (seconds >= 0).all()
    assert (seconds <= entry["raw_seconds"]).all()
    # Never slower at a narrower width.
    for axis in range(seconds.ndim):
      assert (np.diff(seconds, axis=axis) >= 0).all()
  assert np.isfinite(table.fixed)
  meta = table.metadata
  for key in ("platform", "processor", "cpu_count", "keras", "backend",
              "backend_version", "date", "measure_seconds"):
    assert key in meta
  assert meta["batch_size"] == 4 and meta["training"] is False
  assert meta["backend"] == keras.backend.backend()
  # The whole model was timed dense and at 3 uniform widths; scale and
  # fixed are their least-squares line over the layers' sum.
  points = meta["calibration"]
  assert [p["fraction"] for p in points] == [1.0, 0.75, 0.5, 0.25, 0.0]
  assert points[0]["whole_seconds"] == meta["whole_seconds"]
  x = np.array([p["layer_seconds"] for p in points])
  y = np.array([p["whole_seconds"] for p in points])
  scale = ((x[1:] - x[0]) @ (y[1:] - y[0])) / ((x[1:] - x[0]) @ (x[1:] - x[0]))
  if scale > 0:
    assert table.scale == pytest.approx(scale)
  else:  # a noisy fit falls back to scale 1
    assert table.scale == 1.0
  # The line passes through the dense point: the dense model is predicted
  # as measured.
  assert table.predict(model) == pytest.approx(meta["whole_seconds"])
  # Each point's layer sum is what the table reads at its widths.
  groups = keras_epi.channel_groups(model)
  half = {g.name: np.arange(max(1, round(0.5 * g.size))) for g in groups}
  assert table.predict(model, half) == pytest.approx(
      table.scale * points[2]["layer_seconds"] + table.fixed)
  # The caller's model is untouched.
  for w, value in zip(model.weights, before):
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), value)


def test_measure_training_step_keeps_the_callers_statistics():
  model = tiny_model()
  before = [keras.ops.convert_to_numpy(w).copy() for w in model.weights]
  table = keras_epi.LatencyTable.measure(model, batch_size=2, training=True,
                                         widths=(1.0,), repeats=1, warmup=1)
  assert set(table.entries) == {"stem", "c1", "dw", "c2", "fc"}
  assert table.metadata["training"] is True
  assert table.metadata["timing"] == "train_on_batch"
  # Timing a plan trains clones with the table's step, never the model.
  timing = table.time_plan(model, {"c1": np.arange(8)}, repeats=1)
  assert timing["rounds"] == 7 and timing["pruned_seconds"] > 0
  for w, value in zip(model.weights, before):  # BN moving stats included
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), value)


def test_a_plan_predicts_what_its_pruned_model_predicts(measured):
  model, _, table = measured
  keep = {"stem": [0, 2, 4, 6, 7], "c1": np.arange(0, 16, 3)}
  small = keras_epi.prune_model(model, keep)
  assert table.predict(model, keep) == pytest.approx(table.predict(small))
  assert table.predict(model, keep) <= table.predict(model)


def test_save_load_round_trip(measured, tmp_path):
  model, _, table = measured
  path = tmp_path / "table.json"
  table.save(path)
  loaded = keras_epi.LatencyTable.load(path)
  assert loaded == table
  assert loaded.predict(model) == table.predict(model)
  with open(path) as f:
    assert json.load(f)["format"] == "keras_epi.LatencyTable"


def _valid():
  return synthetic_table().to_dict()


def _with(path, value):
  data = _valid()
  target = data
  for key in path[:-1]:
    target = target[key]
  target[path[-1]] = value
  return json.dumps(data)


@pytest.mark.parametrize("text, message", [
    ("{not json", "not JSON"),
    ("[1, 2]", "format"),
    (json.dumps({"format": "something else"}), "format"),
    (_with(("version",), 99), "version 99"),
    (_with(("fixed",), "slow"), "fixed"),
    (_with(("entries", "c1", "seconds"), [[1.0, 2.0]]), "shape"),
    (_with(("entries", "c1", "seconds"), [[-1.0] * 3] * 3), ">= 0"),
    (_with(("entries", "c1", "in"), [4, 1, 8]), "increasing"),
    (_with(("entries", "c1", "in"), [0, 4, 8]), "increasing"),
    (_with(("entries", "dw"), [1, 2]), "must be a dict"),
    (json.dumps({k: v for k, v in _valid().items() if k != "entries"}),
     "entries"),
])
def test_load_of_a_bad_file_is_a_clear_error(tmp_path, text, message):
  path = tmp_path / "bad.json"
  path.write_text(text)
  with pytest.raises(ValueError, match=message) as error:
    keras_epi.LatencyTable.load(path)
  assert "bad.json" in str(error.value)


# -- predict on a hand-made table ---------------------------------------------


def test_interpolation_is_bilinear_and_clamped():
  entry = {"in": [2, 4], "out": [10, 20],
           "seconds": np.array([[1.0, 2.0], [3.0, 5.0]])}
  assert latency.interpolate(entry, 3, 15) == pytest.approx(
      0.25 * (1 + 2 + 3 + 5))
  assert latency.interpolate(entry, 2, 12) == pytest.approx(1.2)
  # Below the grid the narrowest interval is extended linearly (weights
  # -1/2 and 3/2 one interval-half below), and never below 0.
  assert latency.interpolate(entry, 2, 5) == pytest.approx(1.5 * 1 - 0.5 * 2)
  assert latency.interpolate(entry, 1, 20) == pytest.approx(1.5 * 2 - 0.5 * 5)
  assert latency.interpolate(entry, 3, 5) == pytest.approx(
      0.5 * (1.5 * 1 - 0.5 * 2) + 0.5 * (1.5 * 3 - 0.5 * 5))
  assert latency.interpolate(entry, 1, 5) == 0.0  # -0.25, clipped
  assert latency.interpolate(entry, 9, 99) == 5.0  # above: the widest
  tied = {"in": [2, 4], "out": None, "seconds": np.array([1.0, 3.0])}
  assert latency.interpolate(tied, 3, 123) == pytest.approx(2.0)
  assert latency.interpolate(tied, 1, 0) == pytest.approx(0.0)
  assert latency.interpolate({"in": [4], "out": [8],
                              "seconds": np.array([[2.0]])}, 1, 1) == 2.0


def test_predict_equals_the_closed_form():
  model, table = tiny_model(), synthetic_table()
  assert table.predict(model) == pytest.approx(closed_form(8, 16), rel=1e-12)
  for s, c in [(6, 12), (5, 3), (1, 1), (8, 9)]:
    keep = {"stem": np.arange(s), "c1": np.arange(16 - c, 16)}
    assert table.predict(model, keep) == pytest.approx(closed_form(s, c),
                                                       rel=1e-12)
    assert table.predict(model, keep) < table.predict(model)


def test_predict_scales_the_layers_and_adds_fixed():
  model, table = tiny_model(), synthetic_table()
  scaled = keras_epi.LatencyTable(table.entries, fixed=-20e-6, scale=0.8)
  keep = {"stem": np.arange(5), "c1": np.arange(3)}
  layers = closed_form(5, 3) - FIXED
  assert scaled.predict(model, keep) == pytest.approx(0.8 * layers - 20e-6,
                                                      rel=1e-12)
  for bad in (0.0, -1.0, float("nan"), "1"):
    with pytest.raises(ValueError, match="`scale` must be"):
      keras_epi.LatencyTable(table.entries, scale=bad)


def test_calibration_fit_is_the_least_squares_line():
  # Whole = 0.8 * layers + 2 ms exactly: the line is recovered.
  points = [{"fraction": f, "layer_seconds": x, "whole_seconds": 0.8 * x +
             0.002} for f, x in [(1.0, 0.1), (0.5, 0.05), (0.25, 0.02)]]
  assert latency_measure.fit_calibration(points) == pytest.approx((0.8, 0.002))
  # Off the line, it still passes through the dense (first) point and has
  # the least-squares slope of the others about it: points (-1, -1.2) and
  # (-2, -1.4) about it give slope (1.2 + 2.8) / (1 + 4) = 0.8.
  noisy = [{"layer_seconds": x, "whole_seconds": y}
           for x, y in [(3.0, 5.0), (2.0, 3.8), (1.0, 3.6)]]
  scale, fixed = latency_measure.fit_calibration(noisy)
  assert scale == pytest.approx(0.8)
  assert scale * 3.0 + fixed == pytest.approx(5.0)
  # One point, or times that fall as the layers grow: scale 1 and the
  # dense point's difference.
  assert latency_measure.fit_calibration(points[:1]) == pytest.approx((1.0, 0.1 * -0.2 + 0.002))
  falling = [dict(p, whole_seconds=1.0 - p["layer_seconds"]) for p in points]
  assert latency_measure.fit_calibration(falling) == pytest.approx((1.0, 0.9 - 0.1))


def test_grid_widths_are_multiples_of_round_to():
  # The narrowest width a plan can give (round_to) is always timed.
  assert latency_measure.width_grid(24, 1, [0.25, 0.5, 0.75, 1.0], 8) == [8, 16, 24]
  assert latency_measure.width_grid(24, 1, [0.25, 0.5, 0.75, 1.0]) == [1, 6, 12, 18, 24]
  assert latency_measure.width_grid(64, 1, [0.5, 1.0], 8) == [8, 32, 64]
  assert latency_measure.width_grid(4, 1, [0.25, 1.0], 8) == [4]  # narrower than 8
  assert latency_measure.width_grid(20, 1, [0.1, 1.0], 8) == [8, 20]  # at least 8
  assert latency_measure.width_grid(24, 12, [0.25, 1.0], 8) == [12, 24]  # fixed channels


@pytest.mark.parametrize("calibrate", [(1.0,), (-0.1, 0.5), "0.5", 0.5])
def test_measure_rejects_bad_calibration_fractions(calibrate):
  with pytest.raises(ValueError, match="`calibrate` must be fractions"):
    keras_epi.LatencyTable.measure(tiny_model(), calibrate=calibrate)


def test_a_version_1_table_loads_with_scale_1(tmp_path):
  data = synthetic_table().to_dict()
  data["version"] = 1
  del data["scale"]
  path = tmp_path / "v1.json"
  path.write_text(json.dumps(data))
  table = keras_epi.LatencyTable.load(path)
  assert table.scale == 1.0 and table.fixed == FIXED
  assert table.predict(tiny_model()) == pytest.approx(closed_form(8, 16))


def test_predict_names_a_layer_the_table_lacks_and_a_wrong_input_size():
  table = synthetic_table()
  del table.entries["c2"]
  with pytest.raises(ValueError, match="no entry for layer 'c2'.*measure"):
    table.predict(tiny_model())
  table = synthetic_table()
  table.entries["c1"]["in_shape"] = [8, 8, 8]
  with pytest.raises(ValueError, match="'c1'.*measured on inputs of shape"):
    table.predict(tiny_model(size=16))


# -- the latency budget --------------------------------------------------------


def _scores():
  # c1 scores lower than the stem, but a stem channel costs 39 U of latency
  # and a c1 channel 17 U: per unit of latency the stem is cheaper to keep
  # fewer of (1.0 / 39 < 0.9 / 17).
  return {"stem": 1.0 + 0.01 * np.arange(8), "c1": 0.9 + 1e-3 * np.arange(16)}


def test_latency_budget_meets_the_predicted_target_per_unit_of_latency():
  model, table = tiny_model(), synthetic_table()
  # Removing n stem channels leaves FIXED + U * (39 s + 16); the dense model
  # is FIXED + 328 U = 428 U. ratio 0.25 asks for <= 321 U: s = 5 (311 U)
  # meets it, s = 6 (350 U) does not.
  keep = keras_epi.select_channels(model, _scores(), 0.25, budget="latency",
                                   latency_table=table, keep_stem=False)
  np.testing.assert_array_equal(keep["stem"], [3, 4, 5, 6, 7])
  np.testing.assert_array_equal(keep["c1"], np.arange(16))
  assert table.predict(model, keep) <= 0.75 * table.predict(model)
  # A MAC budget ranks by score per MAC too. A stem channel costs 1728
  # (stem) + 9216 (c1 reads it) + 1024 (c2 makes it, the residual) + 4 (fc)
  # = 11972 MACs, a c1 channel 4608 + 576 (dw) + 512 (c2) = 5696: per MAC
  # the stem ranks lower (1.0 / 11972 < 0.9 / 5696). Of the dense 104992
  # MACs, ratio 0.1 asks for <= 94492.8: one stem channel (93020) does it.
  macs = keras_epi.select_channels(model, _scores(), 0.1, budget="macs",
                                   keep_stem=False)
  assert len(macs["stem"]) == 7 and len(macs["c1"]) == 16
  assert keras_epi.count_macs(model, macs) == 104992 - 11972


@pytest.mark.parametrize("ratio", [0.1, 0.2, 0.3, 0.4])
def test_latency_budget_is_met_with_round_to(ratio):
  model, table = tiny_model(), synthetic_table()
  scores = {"c1": np.arange(16.0)}  # the stem whole: T(c) = 156 U + 17 U c
  keep = keras_epi.select_channels(model, scores, ratio, budget="latency",
                                   latency_table=table, round_to=4)
  target = (1 - ratio) * closed_form(8, 16)
  best = max(c for c in range(1, 17) if closed_form(8, c) <= target)
  assert len(keep["c1"]) == 4 * (best // 4)  # the widest multiple of 4
  np.testing.assert_array_equal(keep["c1"], np.arange(16 - len(keep["c1"]),
                                                      16))
  assert table.predict(model, keep) <= target


def test_unreachable_latency_target_states_the_best_ratio():
  model, table = tiny_model(), synthetic_table()
  # The smallest plan (s = c = 1) predicts 110 U of 428 U: at most
  # 1 - 110 / 428 = 0.74299 can be removed.
  with pytest.raises(ValueError, match=r"at most ratio=0\.7429 .*fixed term"):
    keras_epi.select_channels(model, _scores(), 0.75, budget="latency",
                              latency_table=table, keep_stem=False)
  keep = keras_epi.select_channels(model, _scores(), 0.7429, budget="latency",
                                   latency_table=table, keep_stem=False)
  assert table.predict(model, keep) <= (1 - 0.7429) * table.predict(model)


def test_max_latency_ratio_is_the_ratio_the_errors_name():
  model, table = tiny_model(), synthetic_table()
  # As above: 1 - 110 / 428 with the stem cut, 1 - 173 / 428 with it whole.
  assert keras_epi.max_latency_ratio(model, table, keep_stem=False) == 0.7429
  assert keras_epi.max_latency_ratio(model, table) == 0.5957
  # round_to=4: the stem at 4 and c1 at 4 channels keep FIXED + U * (7 * 4
  # + 2 * 16 + 4) = 164 U; min_channels=2 with the stem whole: 8, 2 keep
  # 100 + 56 + 32 + 2 = 190 U.
  assert keras_epi.max_latency_ratio(model, table, keep_stem=False,
                                     round_to=4) == 0.6168
  assert keras_epi.max_latency_ratio(model, table, min_channels=2) == 0.5560
  # The ratio it gives is one the budget meets.
  keep = keras_epi.select_channels(model, _scores(), 0.6168, budget="latency",
                                   latency_table=table, keep_stem=False,
                                   round_to=4)
  assert table.predict(model, keep) <= (1 - 0.6168) * table.predict(model)
  with pytest.raises(ValueError, match="`round_to` must be"):
    keras_epi.max_latency_ratio(model, table, round_to=0)
  with pytest.raises(ValueError, match="`latency_table` must be"):
    keras_epi.max_latency_ratio(model, {"c1": 1.0})
  with pytest.raises(ValueError, match="No group to prune"):
    keras_epi.max_latency_ratio(model, table, ignore=("c1",))


def _faster_by(table, factor, model):
  """Makes `table.time_plan` 'measure' `factor` times its own prediction
  (a machine where plans run faster or slower than the table says); a list
  gives one factor per call (timing noise)."""
  timed = []
  factors = list(factor) if isinstance(factor, list) else None

  def time_plan(model_, keep, *, ignore=(), repeats=None):
    del model_, ignore, repeats
    predicted = table.predict(model, keep) / table.predict(model)
    timed.append(len(keep["c1"]))
    factor_ = factors.pop(0) if factors is not None else factor
    return {"measured_fraction": factor_ * predicted,
            "measured_quartiles": [factor_ * predicted] * 2,
            "predicted_fraction": predicted, "dense_seconds": 1.0,
            "pruned_seconds": factor_ * predicted, "rounds": 7}
  table.time_plan = time_plan
  return timed


def test_timed_plan_corrects_the_table_by_what_it_measured():
  # T(c) = 156 U + 17 U c, dense 428 U. ratio 0.3 wants 0.7 of the time:
  # the table's plan keeps c = 8 (292 U, 0.6822), which this machine runs at
  # 0.9 * 0.6822 = 0.614 (12% under). The next plan asks the table for
  # 0.7 * 0.6822 / 0.614 = 0.7 / 0.9 = 0.7778 (333 U): c = 10 (326 U), which
  # measures 0.9 * 326 / 428 = 0.6855, within 3% of 0.7: chosen.
  model, table = tiny_model(), synthetic_table()
  timed = _faster_by(table, 0.9, model)
  keep, passes = keras_epi.select_channels_timed(
      model, {"c1": np.arange(16.0)}, 0.3, table)
  assert timed == [8, 10]
  np.testing.assert_array_equal(keep["c1"], np.arange(6, 16))
  assert [p["chosen"] for p in passes] == [False, True]
  assert passes[0]["planned_ratio"] == 0.3
  np.testing.assert_allclose(passes[1]["planned_ratio"], 1 - 0.7 / 0.9)
  np.testing.assert_allclose(passes[1]["measured_fraction"], 0.9 * 326 / 428)
  assert passes[1]["widths"] == {"c1": 10}


def test_timed_plan_stops_at_what_the_table_allows_and_says_so(caplog):
  # A machine 1.5x slower than predicted. ratio 0.5 (214 U): c = 3 (207 U,
  # 0.4836) measures 0.725. The correction asks the table for 0.5 * 0.4836
  # / 0.725 = 1/3, more than it allows (c = 1, 173 U: at most ratio
  # 0.5957), so c = 1 is planned (measures 1.5 * 173 / 428 = 0.6063), then
  # the same plan again: it stops, keeps the closest and warns.
  model, table = tiny_model(), synthetic_table()
  timed = _faster_by(table, 1.5, model)
  with caplog.at_level("WARNING"):
    keep, passes = keras_epi.select_channels_timed(
        model, {"c1": np.arange(16.0)}, 0.5, table, passes=5)
  assert timed == [3, 1]
  assert passes[1]["planned_ratio"] == 0.5957
  assert len(keep["c1"]) == 1 and [p["chosen"] for p in passes] == [False,
                                                                   True]
  assert ("closest of 2 timed plan(s) is estimated at 0.6063 (+21.3%"
          in caplog.text)


def test_timed_plan_uses_the_median_factor_of_all_passes():
  # Noisy timings: factors 0.9, 1.0, 0.9. Pass 1: c = 8 (0.6822) measures
  # 0.614, factor 0.9, next asks 0.7 / 0.9: c = 10 (0.7617), which measures
  # 0.7617 (factor 1.0). The median factor is now 0.95, c = 10 is estimated
  # at 0.7236 (+3.4%, over 3%), next asks 0.7 / 0.95 = 0.7368 (315.4 U):
  # c = 9 (309 U, 0.7220), measured at factor 0.9. The median factor is 0.9
  # again: estimates 0.614, 0.6855, 0.6498, so c = 10 (-2.1%) is chosen,
  # although its own timing said +8.8%.
  model, table = tiny_model(), synthetic_table()
  timed = _faster_by(table, [0.9, 1.0, 0.9], model)
  keep, passes = keras_epi.select_channels_timed(
      model, {"c1": np.arange(16.0)}, 0.3, table)
  assert timed == [8, 10, 9]
  assert len(keep["c1"]) == 10
  assert [p["chosen"] for p in passes] == [False, True, False]
  np.testing.assert_allclose([p["estimated_fraction"] for p in passes],
                             [0.9 * 292 / 428, 0.9 * 326 / 428,
                              0.9 * 309 / 428])
  np.testing.assert_allclose(passes[2]["planned_ratio"], 1 - 0.7 / 0.95)


def test_timed_plan_measures_a_real_model(measured):
  model, before, table = measured
  groups = keras_epi.channel_groups(model)
  scores = keras_epi.magnitude_importance(model, groups)
  keep, passes = keras_epi.select_channels_timed(model, scores, 0.3, table,
                                                 passes=1, repeats=1)
  (only,) = passes
  assert only["chosen"] and only["rounds"] == 7
  assert only["measured_fraction"] > 0 and only["dense_seconds"] > 0
  low, high = only["measured_quartiles"]
  assert low <= only["measured_fraction"] <= high
  np.testing.assert_allclose(
      only["predicted_fraction"],
      table.predict(model, keep) / table.predict(model))
  for w, b in zip(model.weights, before):  # the caller's model untouched
    np.testing.assert_array_equal(keras.ops.convert_to_numpy(w), b)


def test_timed_plan_argument_errors():
  model, table = tiny_model(), synthetic_table()
  scores = {"c1": np.arange(16.0)}
  with pytest.raises(ValueError, match="`passes` must be"):
    keras_epi.select_channels_timed(model, scores, 0.3, table, passes=0)
  with pytest.raises(ValueError, match="`tolerance` must be"):
    keras_epi.select_channels_timed(model, scores, 0.3, table, tolerance=1)
  with pytest.raises(ValueError, match="`ratio` must be"):
    keras_epi.select_channels_timed(model, scores, 1.5, table)
  with pytest.raises(ValueError, match="lacks an integer 'batch_size'"):
    table.time_plan(model, {"c1": np.arange(8)})


def test_epi_callback_refuses_an_unreachable_target_before_training():
  # The callback keeps the stem whole (keep_stem=True), so its smallest
  # plan (s = 8, c = 1) keeps 100 + 7 * 8 + 2 * 8 + 1 = 173 U of 428 U: at
  # most 1 - 173 / 428 = 0.5958 can go, and 0.8 must fail before the fit's
  # first step, not at the prune epoch.
  model, table = tiny_model(), synthetic_table()
  model.compile(keras.optimizers.SGD(0.05),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  x = np.zeros((32, 8, 8, 3), "float32")
  y = np.zeros(32, "int64")
  steps = []
  counter = keras.callbacks.LambdaCallback(
      on_train_batch_begin=lambda batch, logs: steps.append(batch))
  cb = keras_epi.EPICallback(prune_ratio=0.8, budget="latency",
                             latency_table=table, policy="fixed",
                             prune_epoch=2, criterion="magnitude", verbose=0)
  with pytest.raises(ValueError, match=r"checked before training.*at most "
                     r"ratio=0\.5957"):
    model.fit(x, y, epochs=3, batch_size=16, verbose=0,
              callbacks=[cb, counter])
  assert steps == []


def test_latency_table_argument_errors():
  model, table = tiny_model(), synthetic_table()
  scores = {"c1": np.arange(16.0)}
  with pytest.raises(ValueError, match="`latency_table` is required"):
    keras_epi.select_channels(model, scores, 0.5, budget="latency")
  with pytest.raises(ValueError, match="`latency_table` is only used"):
    keras_epi.select_channels(model, scores, 0.5, budget="macs",
                              latency_table=table)
  with pytest.raises(ValueError, match="`latency_table` must be a keras_epi"):
    keras_epi.select_channels(model, scores, 0.5, budget="latency",
                              latency_table={"c1": 1.0})
  with pytest.raises(ValueError, match="`latency_table` is required"):
    keras_epi.EPICallback(budget="latency")
  with pytest.raises(ValueError, match="`latency_table` is only used"):
    keras_epi.EPICallback(budget="neurons", latency_table=table)


@pytest.mark.parametrize("kwargs, message", [
    ({"batch_size": 0}, "`batch_size`"),
    ({"batch_size": 2.0}, "`batch_size`"),
    ({"repeats": 0}, "`repeats`"),
    ({"warmup": -1}, "`warmup`"),
    ({"training": "yes"}, "`training`"),
    ({"widths": (0.0, 1.0)}, "`widths`"),
    ({"widths": (0.5, 1.5)}, "`widths`"),
    ({"widths": ()}, "`widths`"),
    ({"widths": 0.5}, "`widths`"),
])
def test_measure_argument_errors(kwargs, message):
  with pytest.raises(ValueError, match=message):
    keras_epi.LatencyTable.measure(tiny_model(), **kwargs)


@pytest.mark.parametrize("args, message", [
    (([],), "`entries`"),
    (({}, float("nan")), "`fixed`"),
    (({}, 0.0, []), "`metadata`"),
    (({"c1": {"in": [1], "out": [1]}},), "no 'seconds'"),
])
def test_constructor_errors(args, message):
  with pytest.raises(ValueError, match=message):
    keras_epi.LatencyTable(*args)


def test_measure_needs_fixed_shapes():
  model = keras.Sequential([keras.Input((None, None, 3)),
                            L.Conv2D(4, 3, name="conv")])
  with pytest.raises(ValueError, match="'conv'.*unknown shape"):
    keras_epi.LatencyTable.measure(model, repeats=1, warmup=0)


def test_epi_callback_with_a_latency_budget():
  model, table = tiny_model(), synthetic_table()
  model.compile(keras.optimizers.SGD(0.05),
                keras.losses.SparseCategoricalCrossentropy(from_logits=True))
  rng = np.random.default_rng(0)
  x = rng.normal(size=(64, 8, 8, 3)).astype("float32")
  y = rng.integers(0, 4, size=64)
  cb = keras_epi.EPICallback(prune_ratio=0.4, budget="latency",
                             latency_table=table, policy="fixed",
                             prune_epoch=1, criterion="magnitude", verbose=0)
  model.fit(x, y, epochs=2, batch_size=16, verbose=0, callbacks=[cb])
  assert cb.prune_epoch == 1 and cb.pruned_model is not None
  predicted = table.predict(cb.pruned_model)
  assert predicted == pytest.approx(table.predict(model, cb.keep))
  assert predicted <= 0.6 * table.predict(model)


def test_a_table_refuses_a_wider_model_it_was_not_measured_for():
  table = synthetic_table()
  keras.utils.set_random_seed(0)
  x = keras.Input((8, 8, 3))
  h = L.Conv2D(32, 3, padding="same", name="stem")(x)  # 8 in the table
  h = L.ReLU(name="stem_relu")(L.BatchNormalization(name="stem_bn")(h))
  a = L.Conv2D(64, 3, padding="same", name="c1")(h)
  a = L.DepthwiseConv2D(3, padding="same", name="dw")(a)
  b = L.Conv2D(32, 1, name="c2")(a)
  h = L.Add(name="add")([h, b])
  wide = keras.Model(x, L.Dense(4, name="fc")(L.GlobalAveragePooling2D()(h)))
  with pytest.raises(ValueError, match=r"Layer 'stem' \(Conv2D\).*widths "
                     r"\(3, 32\), wider than the table measured .*another "
                     r"model \('synthetic'\)"):
    table.predict(wide)
  # The model it was measured on, and its pruned models, are predicted.
  model = tiny_model()
  assert table.predict(model) > table.predict(
      keras_epi.prune_model(model, {"c1": np.arange(8)}))


def test_measure_reads_back_a_table_of_the_same_model_and_machine(tmp_path):
  model = tiny_model()
  settings = dict(batch_size=2, widths=(0.5, 1.0), repeats=1, warmup=0,
                  calibrate=())
  first = keras_epi.LatencyTable.measure(model, cache_dir=tmp_path,
                                         **settings)
  assert "cached_from" not in first.metadata
  again = keras_epi.LatencyTable.measure(tiny_model(), cache_dir=tmp_path,
                                         **settings)
  assert again.metadata["cached_from"].startswith(str(tmp_path))
  assert again.entries.keys() == first.entries.keys()
  for key, entry in first.entries.items():
    np.testing.assert_array_equal(again.entries[key]["seconds"],
                                  entry["seconds"])
  assert again.fixed == first.fixed and again.scale == first.scale
  # Another batch size, or another model, is measured anew.
  other = keras_epi.LatencyTable.measure(
      model, cache_dir=tmp_path, **dict(settings, batch_size=3))
  assert "cached_from" not in other.metadata
  larger = keras_epi.LatencyTable.measure(tiny_model(size=12),
                                          cache_dir=tmp_path, **settings)
  assert "cached_from" not in larger.metadata
  assert len(list(tmp_path.iterdir())) == 3
