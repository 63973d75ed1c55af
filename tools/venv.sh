#!/usr/bin/env bash
# Sourced by tools/main_job.sh and tools/test.sh: makes sure the project's
# virtual environment .venv exists and sets PY to its python. A venv keeps
# pip away from the system's Python, which Debian 12 and Ubuntu 23.04+
# mark as externally managed (PEP 668: a plain `pip install` is refused).
# Where the venv module is missing (Debian's python3-venv), it installs it
# with apt-get when it may (root, or sudo without a password).
# Set KERAS_EPI_VENV to use another directory.
venv_dir="${KERAS_EPI_VENV:-$PWD/.venv}"
_venv_ok() { [ -x "$venv_dir/bin/python" ] && "$venv_dir/bin/python" -m pip --version >/dev/null 2>&1; }
if ! _venv_ok; then
  rm -rf "$venv_dir"
  if ! python3 -m venv "$venv_dir" >/dev/null 2>&1; then
    rm -rf "$venv_dir"
    SUDO=""; [ "$(id -u)" = 0 ] || SUDO="sudo -n"
    pyver=$(python3 -c 'import sys; print(f"{sys.version_info[0]}.{sys.version_info[1]}")')
    echo "venv: 'python3 -m venv' failed; installing Debian's python3-venv" >&2
    { $SUDO apt-get install -y -q python3-venv "python${pyver}-venv" >/dev/null 2>&1 ||
      { $SUDO apt-get update -q >/dev/null 2>&1 &&
        $SUDO apt-get install -y -q python3-venv "python${pyver}-venv" >/dev/null 2>&1; }; } || {
      echo "error: cannot create a virtual environment with $(command -v python3):" \
           "install the venv module (Debian/Ubuntu: sudo apt-get install python3-venv)" \
           "and run this again." >&2
      exit 1; }
    python3 -m venv "$venv_dir"
  fi
fi
PY="$venv_dir/bin/python"
export PIP_DISABLE_PIP_VERSION_CHECK=1
