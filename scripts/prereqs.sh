#!/usr/bin/env bash
# What ./scripts/test.sh needs before it can install the rest, checked at once so a missing
# tool stops the run in the first second with its name instead of twenty minutes in.
#
#   scripts/prereqs.sh      prints one line per tool; exits 1 naming what is missing
#
# Needed: a Debian-like Linux with apt-get, run as root (RabbitMQ, a JDK 17, Maven,
# Chromium and Ruby come from apt when missing); Rust 1.95 through rustup (rust-toolchain.toml);
# Go >= 1.26 (kube-apiserver, etcd and helm are built from their modules); Node.js >= 20
# with npm (the browser and SDK tests); Python >= 3.11 with venv (moto's SQS server, boto3);
# curl, git, tar.
set -uo pipefail

missing=()
need() { # need NAME WHY
  if command -v "$1" >/dev/null 2>&1; then
    printf 'prereqs: %-8s %s\n' "$1" "$(command -v "$1")"
  else
    missing+=("$1 ($2)")
  fi
}
# at_least NAME HAVE WANT: HAVE >= WANT, both dotted versions.
at_least() {
  [ "$(printf '%s\n%s\n' "$3" "$2" | sort -V | head -1)" = "$3" ] ||
    missing+=("$1 >= $3 (found $2)")
}

[ -r /etc/os-release ] && . /etc/os-release
case " ${ID:-} ${ID_LIKE:-} " in
  *" debian "*|*" ubuntu "*) ;;
  *) missing+=("a Debian or Ubuntu system (found ${PRETTY_NAME:-unknown}): services and Chromium come from apt") ;;
esac
[ "$(id -u)" -eq 0 ] || missing+=("root (apt-get installs RabbitMQ, a JDK 17, Maven, Chromium and Ruby when missing)")
need apt-get "Debian packages"
need cargo "Rust, https://rustup.rs"
need rustup "Rust toolchains, https://rustup.rs (rust-toolchain.toml names 1.95.0)"
need go "Go >= 1.26, builds kube-apiserver, etcd and helm"
need node "Node.js >= 20, the browser and SDK tests"
need npm "the browser and SDK tests' packages"
need python3 "Python >= 3.11, moto's SQS server and scripts/deps-check.sh"
need curl "downloads from the package registries"
need git "the checkout, the vendored-crate check"
need tar "the vendored-crate check"

if command -v go >/dev/null 2>&1; then
  at_least go "$(go env GOVERSION 2>/dev/null | sed 's/^go//')" 1.26
fi
if command -v node >/dev/null 2>&1; then
  at_least node "$(node --version | sed 's/^v//')" 20
fi
if command -v python3 >/dev/null 2>&1; then
  at_least python3 "$(python3 -c 'import sys; print("%d.%d" % sys.version_info[:2])')" 3.11
  python3 -c 'import venv' 2>/dev/null || missing+=("python3's venv module (apt-get install python3-venv)")
fi

if [ "${#missing[@]}" -gt 0 ]; then
  echo "prereqs: missing:" >&2
  printf '  - %s\n' "${missing[@]}" >&2
  echo "prereqs: see README.md, Prerequisites" >&2
  exit 1
fi
echo "prereqs: all present"
