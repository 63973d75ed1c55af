"""Where the time goes: every MAC layer of dense and pruned models timed
alone, and the totals by kind and by alignment (run.py --breakdown)."""

import functools

import keras
import numpy as np
import tensorflow as tf

from keras_epi import timing


def _repeat_function(layer):
  """`f(x, n)`: `layer(x)` n times in one graph, a sequential while loop (a
  tf.function call costs as much as a small layer at batch 1)."""

  @tf.function(jit_compile=False)
  def repeat(x, n):
    def body(i, acc):
      return i + 1, acc + tf.reshape(layer(x, training=False), [-1])[0]
    return tf.while_loop(lambda i, _: i < n, body,
                         (tf.constant(0), tf.constant(0.0)),
                         parallel_iterations=1)[1]

  return repeat


def _median(fn, x, n, times=3):
  return timing.measure(functools.partial(fn, x, tf.constant(n)), times,
                        "median")


def loop_overhead():
  """Seconds per iteration of `_repeat_function`'s loop around a no-op."""
  fn, x = _repeat_function(lambda x, training: x), tf.zeros((1, 1))
  fn(x, tf.constant(1))
  return max(0.0, (_median(fn, x, 2000, 5) - _median(fn, x, 0, 5)) / 2000)


def layer_breakdown(config, variants, batch_size, rng, loop_seconds,
                    monitor):
  """Every MAC layer of every variant timed alone, variants alternated, as
  (T(n) - T(0)) / n of `_repeat_function` less the loop's own cost; per
  layer its name, kind and per variant c_in, c_out, MACs, seconds."""
  rows = []
  for dense_layer in variants[0]["model"].layers:
    if not isinstance(dense_layer, (keras.layers.Conv2D, keras.layers.Dense,
                                    keras.layers.DepthwiseConv2D)):
      continue
    layers = [v["model"].get_layer(dense_layer.name) for v in variants]
    inputs = [tf.constant(rng.uniform(-1, 1, (batch_size, *l.input.shape[1:]))
                          .astype("float32")) for l in layers]
    fns = [_repeat_function(l) for l in layers]
    for fn, x in zip(fns, inputs):
      fn(x, tf.constant(1))  # trace
    overheads = [_median(fn, x, 0) for fn, x in zip(fns, inputs)]
    probe = config.breakdown_probe_iterations
    single = (_median(fns[0], inputs[0], probe) - overheads[0]) / probe
    n = int(np.clip(round(config.breakdown_seconds / max(single, 1e-9)), 1,
                    config.breakdown_max_iterations))
    seconds = timing.time_alternately(
        {v["label"]: functools.partial(fn, x, tf.constant(n))
         for v, fn, x in zip(variants, fns, inputs)},
        rounds=config.breakdown_repeats, warmup=0, num_calls=1,
        monitor=monitor)["median_seconds"]
    kind = ("dense" if isinstance(dense_layer, keras.layers.Dense) else
            "depthwise" if isinstance(dense_layer, keras.layers.DepthwiseConv2D)
            or dense_layer.groups > 1 else
            "conv{}x{}".format(*dense_layer.kernel_size))
    rows.append({"name": dense_layer.name, "kind": kind,
                 "repeats_per_measurement": n, "variants": [
                     {"c_in": l.input.shape[-1], "c_out": l.output.shape[-1],
                      "macs": v["layer_macs"][l.name],
                      "seconds": max((seconds[v["label"]] - t0) / n -
                                     loop_seconds, 0.0)}
                     for v, l, t0 in zip(variants, layers, overheads)]})
  return rows


def summarize(rows, index, model_seconds, worst):
  """Variant `index` against dense (0): MAC-layer totals overall, by kind
  and by whether the widths pruning changed are multiples of 8; "other
  ops" = whole-model `model_seconds` (dense, pruned) less the MAC layers;
  the `worst` least efficient layers."""

  def totals(selected):
    d, p, d_macs, p_macs = (sum(r["variants"][i][k] for r in selected)
                            for i, k in ((0, "seconds"), (index, "seconds"),
                                         (0, "macs"), (index, "macs")))
    if not selected or not p or not p_macs:
      return None
    return {"layers": len(selected), "dense_ms": 1e3 * d,
            "pruned_ms": 1e3 * p, "speedup": d / p, "ideal": d_macs / p_macs,
            "efficiency": d / p / (d_macs / p_macs)}

  def aligned(row):
    v, d = row["variants"][index], row["variants"][0]
    sides = ["c_out"] if row["kind"] == "depthwise" else ["c_in", "c_out"]
    return all(v[k] % 8 == 0 for k in sides if v[k] != d[k])

  mac = totals(rows)
  other = [model_seconds[0] - mac["dense_ms"] / 1e3,
           model_seconds[1] - mac["pruned_ms"] / 1e3]
  per_layer = [dict(name=r["name"], kind=r["kind"],
                    **{f"{p}{k}": r["variants"][i][k] for p, i in (
                        ("", index), ("dense_", 0)) for k in ("c_in", "c_out")},
                    **totals([r])) for r in rows if totals([r])]
  return {
      "mac_layers": mac,
      "other_ops": {"dense_ms": 1e3 * other[0], "pruned_ms": 1e3 * other[1],
                    "dense_share": other[0] / model_seconds[0],
                    "pruned_share": other[1] / model_seconds[1],
                    "speedup": other[0] / other[1] if other[1] > 0 else None},
      "by_kind": {k: totals([r for r in rows if r["kind"] == k])
                  for k in sorted({r["kind"] for r in rows})},
      "by_alignment": {
          "multiple_of_8": totals([r for r in rows if aligned(r)]),
          "not_multiple_of_8": totals([r for r in rows if not aligned(r)])},
      "worst_layers": sorted(per_layer, key=lambda r: r["efficiency"])[:worst],
  }
