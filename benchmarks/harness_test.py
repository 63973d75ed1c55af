"""Tests of benchmarks/_harness.py: flags from a config, the report."""

import dataclasses
import json

from absl import flags

from benchmarks import _harness


@dataclasses.dataclass(frozen=True)
class _Config:
  harness_test_widths: tuple = _harness.flag((1, 8), "Widths.")
  harness_test_rate: float = _harness.flag(0.5, "A rate.")
  harness_test_rounds: int = 7
  quick: bool = _harness.flag(False, "Quick.")


def test_flags_make_a_typed_config_and_quick_fills_what_was_not_given():
  _harness.define_flags(_Config)
  assert "harness_test_rounds" not in flags.FLAGS  # not a flag: a setting
  try:
    flags.FLAGS(["test", "--harness_test_widths=2,16", "--quick"])
    config = _harness.config_from_flags(_Config, {
        "harness_test_widths": (4,), "harness_test_rate": 0.1,
        "harness_test_rounds": 2})
  finally:
    flags.FLAGS.unparse_flags()
  assert config == _Config((2, 16), 0.1, 2, True)  # given flags win


def test_report_keeps_the_notes_of_the_markdown_it_replaces(tmp_path):
  path = tmp_path / "r.json"
  (tmp_path / "r.md").write_text(f"old table\n\n{_harness.NOTES}\nfound\n")
  _harness.write_report(str(path), {"x": (1, 2)}, "# new\n\n| a |\n")
  assert json.loads(path.read_text()) == {"x": [1, 2]}
  assert (tmp_path / "r.md").read_text() == (
      f"# new\n\n| a |\n\n{_harness.NOTES}\nfound\n")
  assert _harness.table(["a", "b", "c"], [[1], [2, 3, 4]]) == [
      "| a | b | c |", "|---|---|---|", "| 1 |  |  |", "| 2 | 3 | 4 |"]
