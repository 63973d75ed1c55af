"""keras_epi: early structural pruning (EPI) for Keras 3 CNNs."""

import os

import setuptools

_HERE = os.path.dirname(os.path.abspath(__file__))


def _version():
  scope = {}
  with open(os.path.join(_HERE, "keras_epi", "version.py")) as f:
    exec(f.read(), scope)  # pylint: disable=exec-used
  return scope["__version__"]


# keras_epi runs on any Keras 3 backend and needs none in particular, as
# Keras does not: pick one with its extra (TensorFlow, the default backend,
# also brings SavedModel/TFLite export and tf.distribute).
_TENSORFLOW = ["tensorflow>=2.16,<2.22"]
_JAX = ["jax>=0.4.30,<0.11"]
_TORCH = ["torch>=2.1,<2.14"]
# The example trainers run on TensorFlow (tf.data, SavedModel, TFLite); they
# write TensorBoard logs and plots, read datasets other than the offline
# Fashion-MNIST through tensorflow-datasets, and check their TFLite files in
# LiteRT's interpreter (tf.lite.Interpreter is deprecated).
_EXAMPLES = _TENSORFLOW + ["matplotlib>=3.7", "tensorboard>=2.16",
                           "tensorflow-datasets>=4.9", "ai-edge-litert>=2.0,<3"]

with open(os.path.join(_HERE, "README.md")) as f:
  _LONG_DESCRIPTION = f.read()

setuptools.setup(
    name="keras-epi",
    version=_version(),
    description=("Early structural pruning for Keras 3 (TensorFlow, JAX, "
                 "PyTorch): prune CNN filters as soon as the sub-network "
                 "stabilises (EPI, CVPR 2022)."),
    long_description=_LONG_DESCRIPTION,
    long_description_content_type="text/markdown",
    packages=["keras_epi"],
    python_requires=">=3.10",
    # Upper bounds at the next minor releases of the versions tested (TF
    # 2.21, Keras 3.15, keras-hub 0.32, JAX 0.10, PyTorch 2.13); lower bounds
    # are the oldest APIs used.
    install_requires=[
        "keras>=3.5,<3.16",
        "absl-py>=1.0",
        "numpy>=1.24",
    ],
    extras_require={
        "tensorflow": _TENSORFLOW,
        "jax": _JAX,
        "torch": _TORCH,
        "examples": _EXAMPLES,
        # keras-hub: the zoo tests build its CNNs from constructor arguments.
        # JAX: the backend-neutral tests run on it too (tools/test.sh); the
        # PyTorch run installs torch itself, where asked.
        "test": ["pytest>=7", "pytest-xdist>=3", "keras-hub>=0.20,<0.33"] +
                _EXAMPLES + _JAX,
        "bench": _EXAMPLES,
        # The peer compared against in benchmarks/study/tfmot_peer.py. It needs
        # Keras 2 (TF_USE_LEGACY_KERAS=1, its own process); keras_epi never
        # imports it.
        "peer": ["tf_keras>=2.16", "tensorflow-model-optimization>=0.8"],
    },
    license="Apache-2.0",
    classifiers=[
        "Programming Language :: Python :: 3",
        "Topic :: Scientific/Engineering :: Artificial Intelligence",
    ],
)
