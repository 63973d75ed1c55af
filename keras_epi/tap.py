"""GradientTap: the train step's gradients, seen without a second backward
pass, for as long as one fit lasts."""

import contextlib

from keras_epi import _keras_internals as internals


class GradientTap:
  """Sees the gradients of `model.fit`'s train step, for one fit at most.

  The tap wraps the optimizer's `apply` *only while the train function runs*
  (a context manager around each call, entered once outside any replica
  threads, so an exception or a `KeyboardInterrupt` anywhere cannot leave
  the wrapper behind), and the train function is made anew for it: a
  `tf.function` under TensorFlow and JAX's jitted step (whose
  `stateless_apply` calls `apply`) are traced with the wrapper in them;
  under PyTorch every eager step runs it. Its step is a new function (the
  model's `train_step`, wrapped), so it is traced anew, never taken from a
  cache of the plain step's traces (JAX caches traces by function), and
  `remove` restores the step the model had, whose traces never saw the
  wrapper.

  Each train step needs a lease (`grant`, from the owning callback's
  `on_train_batch_begin`): a step without one belongs to a later `fit` that
  the callback is not part of (the one that installed the tap ended with an
  exception, which Keras' `fit` does not report to callbacks), so the tap
  removes itself and the step runs the plain train function. The owner is
  held weakly by `on_gradients`, so the tap never outlives it.

  Args:
    model: The compiled model whose train steps are tapped.
    on_gradients: ``on_gradients(grads, variables) -> grads``, called while
      the train step runs or is traced (its ops become part of the step).
  """

  _NONE = object()  # the model had no `train_step` of its own

  def __init__(self, model, on_gradients):
    self.model = model
    self.on_gradients = on_gradients
    optimizer = model.optimizer
    self._optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    self._leased = False
    self._installed = False
    self._train_function = None  # our wrapper, while installed
    self._own_step = self._NONE  # the model's own `train_step` attribute

  def install(self):
    """Makes the model's train function anew with the tap in its step."""
    model = self.model
    self._installed = True
    self._leased = False
    self._own_step = vars(model).get("train_step", self._NONE)
    step = model.train_step

    def train_step(*args, **kwargs):  # a new function: traced anew
      return step(*args, **kwargs)

    model.train_step = train_step
    model.make_train_function(force=True)
    made = model.train_function

    def train_function(*args):  # (iterator) or, under JAX, (state, iterator)
      if not (self._installed and self._leased):
        self.remove()  # a stale tap: the fit that installed it is over
        return self.model.train_function(*args)
      self._leased = False
      with self.tapping():
        return made(*args)

    self._train_function = train_function
    model.train_function = train_function

  def grant(self):
    """Lets the next train step run tapped (one lease per train-function
    call; call it from `on_train_batch_begin`)."""
    self._leased = True

  @property
  def installed(self):
    return self._installed

  def remove(self):
    """Restores the model's own train step and plain train function.
    Idempotent."""
    if not self._installed:
      return
    model = self.model
    self._installed = False
    self._leased = False
    if self._own_step is self._NONE:
      vars(model).pop("train_step", None)
    else:
      model.train_step = self._own_step
    self._own_step = self._NONE
    if model.train_function is self._train_function:
      model.make_train_function(force=True)
    self._train_function = None

  @contextlib.contextmanager
  def tapping(self):
    """The optimizer's `apply` wrapped, for the body of the `with`."""
    inner = self._optimizer
    previous = vars(inner).get("apply")
    original = inner.apply
    on_gradients = self.on_gradients

    def apply(grads, trainable_variables=None):
      variables = (trainable_variables if trainable_variables is not None
                   else internals.optimizer_variables_to_train(inner))
      grads = on_gradients(list(grads), list(variables))
      return original(grads, trainable_variables)

    inner.apply = apply
    try:
      yield
    finally:
      if previous is None:
        vars(inner).pop("apply", None)
      else:
        inner.apply = previous
