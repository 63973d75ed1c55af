"""Argument checks shared by the public classes: numbers, integers and bools,
NumPy scalars included, with errors that name the argument."""

import numbers
import os

import numpy as np


def is_integer(value):
  """Python and NumPy integers, not bools."""
  return isinstance(value, numbers.Integral) and not isinstance(
      value, (bool, np.bool_))


def is_number(value):
  """Python and NumPy reals, not bools or strings."""
  return isinstance(value, numbers.Real) and not isinstance(
      value, (bool, np.bool_))


def integer(name, value, minimum, context=""):
  """`value` as an int (NumPy integers too), or a ValueError naming it."""
  if not is_integer(value) or value < minimum:
    raise ValueError(f"`{name}` must be an integer >= {minimum}{context}, "
                     f"received {name}={value!r}.")
  return int(value)


def number(name, value, interval):
  """`value` as a float in `interval` ("(0, 1)", "(0, 1]", "[0, inf)"), or a
  ValueError naming it. NumPy scalars are numbers; strings and bools not."""
  low, high = (float(v) for v in interval[1:-1].split(", "))
  ok = (is_number(value) and
        (low < value if interval[0] == "(" else low <= value) and
        (value < high if interval[-1] == ")" else value <= high))
  if not ok:
    raise ValueError(f"`{name}` must be a number in {interval}, received "
                     f"{name}={value!r}.")
  return float(value)


def boolean(name, value):
  """`value` as a bool (NumPy bools too), or a ValueError naming it."""
  if not isinstance(value, (bool, np.bool_)):
    raise ValueError(f"`{name}` must be True or False, received "
                     f"{name}={value!r}.")
  return bool(value)


def choice(name, value, choices):
  """`value` if it is one of `choices`, or a ValueError naming it."""
  if value not in choices:
    raise ValueError(f"`{name}` must be one of {choices}, received "
                     f"{value!r}.")
  return value


def names(name, value):
  """`value` as a tuple of layer names (a list, tuple or set of strings),
  or a ValueError naming it."""
  if isinstance(value, str) or not isinstance(
      value, (list, tuple, set, frozenset)) or not all(
          isinstance(n, str) for n in value):
    raise ValueError(f"`{name}` must be a collection of layer names, "
                     f"received {value!r}.")
  return tuple(value)


def path(name, value):
  """`value` as a path string, or None; a ValueError naming it otherwise."""
  if value is None:
    return None
  if not isinstance(value, (str, os.PathLike)):
    raise ValueError(f"`{name}` must be None or a directory path (a "
                     f"string), received {value!r}.")
  return os.fspath(value)


def fractions(name, values, interval):
  """`values` (an iterable of numbers, each in `interval` as in `number`)
  as a list of floats, or a ValueError naming it."""
  low, high = (float(v) for v in interval[1:-1].split(", "))
  ok = not isinstance(values, (str, bytes)) and hasattr(values, "__iter__")
  values = list(values) if ok else values
  if ok:
    ok = all(is_number(f) and (low < f if interval[0] == "(" else low <= f)
             and (f < high if interval[-1] == ")" else f <= high)
             for f in values)
  if not ok or (interval[0] == "(" and not values):
    raise ValueError(f"`{name}` must be fractions in {interval}, received "
                     f"{name}={values!r}.")
  return [float(f) for f in values]
