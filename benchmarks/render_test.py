"""Every committed result renders with today's writer: the tables of each
committed .md (above its notes; empty cells aside) come back from its JSON."""

import glob
import json
import os

import pytest

from benchmarks.coverage import run as coverage
from benchmarks.inference_speed import run as inference_speed
from benchmarks.latency_budget import run as latency_budget
from benchmarks.schedule import run as schedule
from benchmarks.study import latency as study_latency
from benchmarks.study import run as study
from benchmarks.surgery_time import run as surgery_time
from benchmarks.training_cost import epoch_start
from benchmarks.training_cost import fit_return
from benchmarks.training_cost import run as training_cost
from benchmarks.transformers import run as transformers
from benchmarks.transformers import width

_HERE = os.path.dirname(os.path.abspath(__file__))
_WRITERS = {  # by the start of the file's name; latency_budget's otherwise
    "coverage": coverage.markdown, "surgery_time": surgery_time.markdown,
    "inference_speed": inference_speed.markdown,
    "fashion_mnist_latency": study_latency.markdown,
    "fashion_mnist_study": lambda r: study.markdown(r["summary"], r["config"]),
    "summary": latency_budget.summary_markdown,
    "training_cost": training_cost.markdown, "schedule": schedule.markdown,
    "epoch_start": epoch_start.markdown, "fit_return": fit_return.markdown,
    "transformers": transformers.markdown, "width": width.markdown}
_RESULTS = sorted(glob.glob(os.path.join(_HERE, "*", "results", "**", "*.md"),
                            recursive=True))


def _rows(text):
  return ["|".join(c.strip() for c in line.split("|") if c.strip())
          for line in text.split("<!-- notes -->")[0].splitlines()
          if line.startswith("|")]


@pytest.mark.parametrize("path", _RESULTS,
                         ids=[os.path.relpath(p, _HERE) for p in _RESULTS])
def test_committed_tables_render_again(path):
  name = os.path.basename(path)
  writer = next((w for k, w in _WRITERS.items() if name.startswith(k)),
                latency_budget.markdown)
  with open(path[:-3] + ".json") as f:
    rendered = _rows(writer(json.load(f)))
  with open(path) as f:
    assert rendered == _rows(f.read())
