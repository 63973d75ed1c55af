"""Tests of keras_epi._validation: the shared argument checks."""

import numpy as np
import pytest

from keras_epi import _validation as validation

pytestmark = pytest.mark.backends  # run on JAX and PyTorch too (tools/test.sh)


def test_accepted_values_and_their_types():
  assert validation.integer("n", np.int64(3), 1) == 3
  assert validation.number("r", np.float32(0.5), "(0, 1)") == 0.5
  assert validation.number("t", 1.0, "(0, 1]") == 1.0
  assert validation.boolean("b", np.bool_(True)) is True
  assert validation.choice("c", "a", ("a", "b")) == "a"
  assert validation.names("ignore", ["x", "y"]) == ("x", "y")
  assert validation.path("dir", None) is None
  assert validation.path("dir", "/tmp/x") == "/tmp/x"


@pytest.mark.parametrize("call, message", [
    (lambda: validation.integer("n", 0, 1), "`n` must be an integer >= 1, "
     "received n=0"),
    (lambda: validation.integer("n", True, 0), "received n=True"),
    (lambda: validation.integer("n", 2.0, 0), "received n=2.0"),
    (lambda: validation.number("r", 1.0, "(0, 1)"),
     r"`r` must be a number in \(0, 1\), received r=1.0"),
    (lambda: validation.number("r", "0.5", "(0, 1)"), "received r='0.5'"),
    (lambda: validation.number("r", -1, "[0, inf)"), "received r=-1"),
    (lambda: validation.boolean("b", 1), "`b` must be True or False"),
    (lambda: validation.choice("c", "z", ("a",)),
     r"`c` must be one of \('a',\), received 'z'"),
    (lambda: validation.names("ignore", "x"), "`ignore` must be a collection"),
    (lambda: validation.path("dir", 3), "`dir` must be None or a directory"),
])
def test_errors_name_the_argument_and_the_value(call, message):
  with pytest.raises(ValueError, match=message):
    call()
