#!/usr/bin/env bash
# Offline Bazel build of keras_epi with Bazel 4.x (Debian: apt-get install
# bazel-bootstrap, which pulls in default-jdk-headless and build-essential).
#
# Usage: tools/bazel_build.sh [lib|all|test] [extra bazel arguments...]
#   lib  (default)  bazel build //:keras_epi //:test_oracle //:example_lib
#   all             bazel build //...   (py_test and py_binary targets too)
#   test            bazel test //...    (runs tests/*_test.py under pytest)
#
# Bazel's output root is $KERAS_EPI_BAZEL_ROOT (default /tmp/keras_epi_bazel),
# kept between runs so later builds are incremental; nothing is written in
# the work tree (.bazelrc sets --symlink_prefix=/) and no Bazel server is left
# running (--batch). Exits 0 with a message when bazel is not installed.
#
# `all` and `test` need @rules_cc, @rules_java and @remote_coverage_tools,
# which Bazel 4 would download (they are loaded by @bazel_tools for toolchain
# resolution and for the implicit coverage attributes of tests, not used to
# build anything here). This script writes minimal local stand-ins for them
# under the output root and passes them with --override_repository. (Debian's
# bazel-rules-cc 0.0.4 does not work with Bazel 4.2: it needs
# use_cpp_toolchain from a later @bazel_tools.)
set -euo pipefail

mode="${1:-lib}"
case "${mode}" in
  lib | all | test) shift $(($# > 0 ? 1 : 0)) ;;
  -h | --help)
    sed -n '2,21p' "$0" | sed 's/^# \{0,1\}//'
    exit 0
    ;;
  *)
    echo "bazel_build.sh: unknown mode '${mode}' (use lib, all or test)" >&2
    exit 2
    ;;
esac

if ! command -v bazel >/dev/null 2>&1; then
  echo "bazel_build.sh: bazel not installed, skipping"
  exit 0
fi

repo_root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "${repo_root}"

out_root="${KERAS_EPI_BAZEL_ROOT:-/tmp/keras_epi_bazel}"
stubs="${out_root}/offline_stubs"
mkdir -p "${out_root}"

# write FILE: stdin to FILE, leaving FILE untouched when unchanged.
write() {
  mkdir -p "$(dirname "$1")"
  local tmp
  tmp="$(mktemp "$1.XXXXXX")"
  cat >"${tmp}"
  if cmp -s "${tmp}" "$1"; then rm -f "${tmp}"; else mv -f "${tmp}" "$1"; fi
}

make_stubs() {
  # @rules_cc: what @bazel_tools//tools/cpp and local_config_cc load.
  echo 'workspace(name = "rules_cc")' | write "${stubs}/rules_cc/WORKSPACE"
  : | write "${stubs}/rules_cc/BUILD"
  echo 'package(default_visibility = ["//visibility:public"])' |
    write "${stubs}/rules_cc/cc/BUILD"
  {
    echo '"""Offline stand-in for rules_cc: the native rules of Bazel 4."""'
    for r in cc_binary cc_import cc_library cc_proto_library cc_test \
      cc_toolchain cc_toolchain_suite fdo_prefetch_hints fdo_profile \
      objc_import objc_library; do
      printf '\ndef %s(**kwargs):\n    native.%s(**kwargs)\n' "${r}" "${r}"
    done
  } | write "${stubs}/rules_cc/cc/defs.bzl"

  # @rules_java: what @bazel_tools//tools/jdk loads.
  echo 'workspace(name = "rules_java")' | write "${stubs}/rules_java/WORKSPACE"
  : | write "${stubs}/rules_java/BUILD"
  echo 'package(default_visibility = ["//visibility:public"])' |
    write "${stubs}/rules_java/java/BUILD"
  {
    echo '"""Offline stand-in for rules_java: the native rules of Bazel 4."""'
    for r in java_binary java_import java_library java_lite_proto_library \
      java_package_configuration java_plugin java_proto_library \
      java_runtime java_test java_toolchain; do
      printf '\ndef %s(**kwargs):\n    native.%s(**kwargs)\n' "${r}" "${r}"
    done
  } | write "${stubs}/rules_java/java/defs.bzl"

  # @remote_coverage_tools: implicit attributes of every test rule; only
  # `bazel coverage` would run them.
  echo 'workspace(name = "remote_coverage_tools")' |
    write "${stubs}/remote_coverage_tools/WORKSPACE"
  printf '#!/bin/sh\necho "bazel coverage is not available offline" >&2\nexit 1\n' |
    write "${stubs}/remote_coverage_tools/unavailable.sh"
  chmod +x "${stubs}/remote_coverage_tools/unavailable.sh"
  cat <<'EOF' | write "${stubs}/remote_coverage_tools/BUILD"
package(default_visibility = ["//visibility:public"])

filegroup(name = "coverage_report_generator", srcs = ["unavailable.sh"])

filegroup(name = "lcov_merger", srcs = ["unavailable.sh"])
EOF
}

flags=()
case "${mode}" in
  lib)
    cmd=build
    targets=(//:keras_epi //:test_oracle //:example_lib)
    ;;
  all | test)
    make_stubs
    flags=(
      "--override_repository=rules_cc=${stubs}/rules_cc"
      "--override_repository=rules_java=${stubs}/rules_java"
      "--override_repository=remote_coverage_tools=${stubs}/remote_coverage_tools"
    )
    if [[ "${mode}" == all ]]; then cmd=build; else cmd=test; fi
    targets=(//...)
    ;;
esac

echo "bazel_build.sh: bazel ${cmd} ${targets[*]} (offline, output root ${out_root})"
start=${SECONDS}
status=0
bazel --output_user_root="${out_root}" --batch "${cmd}" \
  ${flags[@]+"${flags[@]}"} "$@" -- "${targets[@]}" || status=$?
elapsed=$((SECONDS - start))

if ((status != 0)); then
  echo "bazel_build.sh: bazel ${cmd} FAILED (exit ${status}) after ${elapsed}s" >&2
  exit "${status}"
fi
echo "bazel_build.sh: bazel ${cmd} OK in ${elapsed}s"
