#!/usr/bin/env bash
# The README's main job on a fresh machine: install, then train ResNet-20 on
# Fashion-MNIST with EPI and export it. Extra arguments go to the trainer.
set -euo pipefail
cd "$(dirname "$0")/.."
# Offline Fashion-MNIST from Debian; where apt is not available (or not
# allowed), the trainer falls back to tensorflow-datasets (needs network).
if [ ! -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
  { $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1 ||
    { $SUDO apt-get update -q >/dev/null 2>&1 &&
      $SUDO apt-get install -y -q dataset-fashion-mnist >/dev/null 2>&1; }; } ||
    echo "main_job: could not install dataset-fashion-mnist; using tfds" >&2
fi
# The project's virtual environment (.venv; the system Python of Debian and
# Ubuntu refuses pip installs, PEP 668).
. tools/venv.sh
"$PY" -m pip install -q -e ".[examples]"
"$PY" examples/train.py --dataset=fashion_mnist --model=resnet20 \
  --max_train_examples=6000 --epochs=10 --prune_ratio=0.5 --epi_window=3 \
  --epi_prune_by=7 \
  --model_dir=runs/fmnist "$@"
