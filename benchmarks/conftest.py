"""Fixtures of the benchmark tests: the tests' synthetic Fashion-MNIST."""

from tests.conftest import fashion_mnist_dir  # pylint: disable=unused-import
