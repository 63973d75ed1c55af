"""The README's Python snippets, run in order, so that they cannot drift.

Every ```python block of README.md runs, in the order of the file, in one
namespace, in a temporary directory. A line ending in ``# -> VALUE`` checks
what its expression gives: equal to VALUE, or within 5% of it where VALUE
starts with ``~``. An HTML comment just before a block may say how the test
runs it: ``<!-- readme-test: skip (why) -->`` skips it, and
``<!-- readme-test: A => B; C => D -->`` runs it with each A replaced by B
(a small model for a large one, fewer epochs).
"""

import os
import re

import pytest

_README = os.path.join(os.path.dirname(os.path.dirname(
    os.path.abspath(__file__))), "README.md")
_BLOCK = re.compile(r"(?:<!--\s*readme-test:(?P<note>.*?)-->\s*\n)?"
                    r"```python\n(?P<code>.*?)```", re.S)
_CHECK = re.compile(r"^(?P<indent>\s*)(?P<expr>[^#\n].*?)\s+#\s*->\s*"
                    r"(?P<value>.+)$")


def snippets(text):
  """``[(code, note)]`` of the README's Python blocks, in order."""
  return [(m.group("code"), (m.group("note") or "").strip())
          for m in _BLOCK.finditer(text)]


def prepared(code, note):
  """The code the test runs for a block: `note`'s replacements applied and
  every ``# -> VALUE`` line turned into a check. None to skip it."""
  if note.startswith("skip"):
    return None
  for part in filter(None, (p.strip() for p in note.split(";"))):
    old, new = (s.strip() for s in part.split("=>"))
    assert old in code, f"README test note replaces {old!r}, not in the block"
    code = code.replace(old, new)
  lines = []
  for line in code.splitlines():
    match = _CHECK.match(line)
    if match is None:
      lines.append(line)
      continue
    indent, expr, value = match.group("indent", "expr", "value")
    if value.startswith("~"):
      lines.append(f"{indent}_check_close(({expr}), {value[1:]}, "
                   f"{expr!r})")
    else:
      lines.append(f"{indent}_check_equal(({expr}), {value}, {expr!r})")
  return "\n".join(lines) + "\n"


def _check_equal(got, want, expr):
  assert got == want, f"README: {expr} gives {got!r}, the README says {want!r}"


def _check_close(got, want, expr):
  assert abs(got - want) <= 0.05 * abs(want), (
      f"README: {expr} gives {got!r}, the README says about {want!r}")


def test_the_checks_themselves():
  code, note = snippets("<!-- readme-test: 30 => 2 -->\n```python\n"
                        "n = 30\nn  # -> 2\nn * 2  # -> ~4.1\n```\n")[0]
  namespace = {"_check_equal": _check_equal, "_check_close": _check_close}
  exec(prepared(code, note), namespace)  # pylint: disable=exec-used
  assert namespace["n"] == 2
  with pytest.raises(AssertionError, match="gives 2, the README says 3"):
    exec(prepared("n  # -> 3\n", ""), namespace)  # pylint: disable=exec-used
  with pytest.raises(AssertionError, match="says about 3"):
    exec(prepared("n  # -> ~3\n", ""), namespace)  # pylint: disable=exec-used
  assert prepared("x = 1\n", "skip (needs the network)") is None


def test_readme_snippets_run_in_order(tmp_path, monkeypatch):
  with open(_README, encoding="utf-8") as f:
    blocks = snippets(f.read())
  assert len(blocks) >= 4
  monkeypatch.chdir(tmp_path)
  namespace = {"__name__": "readme", "_check_equal": _check_equal,
               "_check_close": _check_close}
  for index, (code, note) in enumerate(blocks):
    source = prepared(code, note)
    if source is None:
      continue
    exec(compile(source, f"README.md block {index + 1}", "exec"),  # pylint: disable=exec-used
         namespace)
