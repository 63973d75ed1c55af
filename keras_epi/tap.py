"""GradientTap: the train step's gradients, seen without a second backward
pass, for as long as one fit lasts."""

import contextlib

from keras_epi import _keras_internals as internals


class GradientTap:
  """Sees the gradients of `model.fit`'s train step, for one fit at most.

  The tap wraps the optimizer's `apply` *only while the train function runs*
  (a context manager around each call, so an exception or a
  `KeyboardInterrupt` anywhere cannot leave the wrapper behind), and the
  train function it wraps is traced with the wrapper in its graph. Each train
  step needs a lease (`grant`, from the owning callback's
  `on_train_batch_begin`): a step without one belongs to a later `fit` that
  the callback is not part of (the one that installed the tap ended with an
  exception, which Keras' `fit` does not report to callbacks), so the tap
  removes itself and the step runs the plain train function. The owner is
  held weakly by `on_gradients`, so the tap never outlives it.

  Args:
    model: The compiled model whose train steps are tapped.
    on_gradients: ``on_gradients(grads, variables) -> grads``, called while
      the train step traces (its TensorFlow ops become part of the step).
  """

  def __init__(self, model, on_gradients):
    self.model = model
    self.on_gradients = on_gradients
    optimizer = model.optimizer
    self._optimizer = getattr(optimizer, "inner_optimizer", optimizer)
    self._leased = False
    self._installed = False
    self._train_function = None  # our wrapper, while installed

  def install(self):
    """Retraces the model's train function with the tap in it."""
    self._installed = True
    self._leased = False
    self.model.make_train_function(force=True)
    traced = self.model.train_function

    def train_function(iterator):
      if not (self._installed and self._leased):
        self.remove()  # a stale tap: the fit that installed it is over
        return self.model.train_function(iterator)
      self._leased = False
      with self.tapping():
        return traced(iterator)

    self._train_function = train_function
    self.model.train_function = train_function

  def grant(self):
    """Lets the next train step run tapped (one lease per train-function
    call; call it from `on_train_batch_begin`)."""
    self._leased = True

  @property
  def installed(self):
    return self._installed

  def remove(self):
    """Restores plain train steps. Idempotent."""
    if not self._installed:
      return
    self._installed = False
    self._leased = False
    if self.model.train_function is self._train_function:
      self.model.make_train_function(force=True)
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
