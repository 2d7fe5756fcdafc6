#!/usr/bin/env bash
# Every dependency version is pinned once, in the workspace Cargo.toml, and every workspace
# dependency is used by some member. Prints what breaks either rule; exits 1 if anything does.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
python3 - <<'PY'
import re, sys, tomllib
root = tomllib.load(open("Cargo.toml", "rb"))
pinned = set(root["workspace"]["dependencies"])
used, problems = set(), []
for member in root["workspace"]["members"]:
    manifest = tomllib.load(open(f"{member}/Cargo.toml", "rb"))
    for section in ("dependencies", "dev-dependencies", "build-dependencies"):
        for name, spec in manifest.get(section, {}).items():
            if isinstance(spec, dict) and spec.get("workspace"):
                used.add(name)
            else:
                problems.append(f"{member}/Cargo.toml [{section}] {name}: pinned here; pin it in the workspace and use `{name}.workspace = true`")
for name in sorted(pinned - used):
    problems.append(f"Cargo.toml [workspace.dependencies] {name}: no member uses it")
for p in problems:
    print("deps:", p)
print(f"deps: {0 if problems else 1} passed, {1 if problems else 0} failed")
sys.exit(1 if problems else 0)
PY
