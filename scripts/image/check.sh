#!/usr/bin/env bash
# Checks that the image scripts/image/build.sh wrote has the contents the
# Dockerfile gives, without a Docker engine:
#   config  User, Entrypoint, Cmd, Env, WorkingDir, ExposedPorts, Labels equal
#           what the Dockerfile's last stage declares on top of its base
#           (gcr.io/distroless/cc-debian12:nonroot, whose config is written below)
#   files   every file the Dockerfile copies is there, byte for byte the release
#           binary; the base holds distroless cc-debian12's Debian packages (its
#           dpkg status.d), the nonroot user 65532, /tmp 1777, a CA bundle, no
#           shell, and every shared library `ldd` lists for the binaries
#   run     the image's root filesystem, unpacked and mounted read-only, runs
#           `hermes-gateway --version`, `hermes-consumer --version` and
#           `hermes-gateway standalone` (answers /healthz) as user 65532 under runc
#
# Usage: scripts/image/check.sh IMAGE.tar [RELEASE_DIR]
#   RELEASE_DIR  where the release binaries are (default $CARGO_TARGET_DIR/release,
#                CARGO_TARGET_DIR defaulting to ~/.cache/hermes/target)
# Prints one line per check and `N passed, N failed`; exit 1 on any failure.
set -euo pipefail

HERE=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
ROOT=$(cd "$HERE/../.." && pwd)
CACHE=${HERMES_CACHE:-$HOME/.cache/hermes}
IMAGE=${1:?usage: $0 IMAGE.tar [RELEASE_DIR]}
RELEASE=${2:-${CARGO_TARGET_DIR:-$CACHE/target}/release}

log() { printf '[image-check] %s\n' "$*" >&2; }
die() { log "error: $*"; exit 1; }
[ -f "$IMAGE" ] || die "no $IMAGE"

WORK=$(mktemp -d)
CONTAINER=hermes-image-check-$$
cleanup() {
  runc kill "$CONTAINER" KILL >/dev/null 2>&1 || true
  runc delete -f "$CONTAINER" >/dev/null 2>&1 || true
  rm -rf "$WORK"
}
trap cleanup EXIT

passed=0 failed=0
ok() { printf 'ok    %s\n' "$*"; passed=$((passed + 1)); }
bad() { printf 'FAIL  %s\n' "$*"; failed=$((failed + 1)); }

# --- config and files: compared in Python --------------------------------------
python3 "$HERE/oci-image.py" --inspect "$IMAGE" > "$WORK/inspect.json"
mkdir -p "$WORK/rootfs"
# the image's root filesystem (one or more layers, applied in order)
python3 - "$IMAGE" "$WORK/rootfs" <<'PY'
import io, json, sys, tarfile
image, dest = sys.argv[1], sys.argv[2]
with tarfile.open(image) as t:
    index = json.load(t.extractfile("index.json"))
    blob = lambda d: t.extractfile("blobs/sha256/" + d.split(":", 1)[1]).read()
    manifest = json.loads(blob(index["manifests"][0]["digest"]))
    for layer in manifest["layers"]:
        mode = "r:gz" if layer["mediaType"].endswith("gzip") else "r"
        with tarfile.open(fileobj=io.BytesIO(blob(layer["digest"])), mode=mode) as lt:
            lt.extractall(dest, numeric_owner=True, filter="tar")
PY

while IFS= read -r line; do
  case $line in
    ok\ *) ok "${line#ok }" ;;
    FAIL\ *) bad "${line#FAIL }" ;;
  esac
done < <(python3 - "$ROOT/Dockerfile" "$WORK/inspect.json" "$RELEASE" "$WORK/rootfs" <<'PY'
import hashlib, json, os, re, shlex, stat, subprocess, sys

dockerfile, inspect_path, release, rootfs = sys.argv[1:5]
image = json.load(open(inspect_path))
cfg = image["config"].get("config", {})
files = {f["path"].rstrip("/") or "/": f for f in image["files"]}

def ok(msg): print("ok " + msg)
def bad(msg): print("FAIL " + msg)
def check(cond, msg, detail=""):
    ok(msg) if cond else bad(msg + (": " + detail if detail else ""))

# The config of gcr.io/distroless/cc-debian12:nonroot (the Dockerfile's base), as
# its image config publishes it.
base = {
    "User": "65532",
    "Env": ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
            "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"],
    "WorkingDir": "/home/nonroot",
    "Entrypoint": None,
    "Cmd": None,
}
base_packages = {"base-files", "netbase", "tzdata", "ca-certificates", "libc6", "libssl3",
                 "libgcc-s1", "libgomp1", "libstdc++6"}

# the last stage of the Dockerfile
text = re.sub(r"\\\n", " ", open(dockerfile).read())
stages = re.split(r"(?im)^FROM\s+", text)
last = stages[-1]
from_line = last.splitlines()[0]
expected = dict(base)
expected["ExposedPorts"] = {}
expected["Labels"] = {}
copies = []
for raw in last.splitlines()[1:]:
    line = raw.strip()
    if not line or line.startswith("#"):
        continue
    word, _, rest = line.partition(" ")
    word = word.upper()
    if word == "USER":
        expected["User"] = rest.strip()
    elif word in ("CMD", "ENTRYPOINT"):
        value = json.loads(rest) if rest.strip().startswith("[") else ["/bin/sh", "-c", rest]
        expected["Cmd" if word == "CMD" else "Entrypoint"] = value
        if word == "ENTRYPOINT":
            expected["Cmd"] = None
    elif word == "EXPOSE":
        for p in rest.split():
            expected["ExposedPorts"][p if "/" in p else p + "/tcp"] = {}
    elif word == "LABEL":
        for kv in shlex.split(rest):
            k, _, v = kv.partition("=")
            expected["Labels"][k] = v
    elif word == "ENV":
        k, _, v = rest.partition("=")
        expected["Env"] = [e for e in expected["Env"] if not e.startswith(k + "=")] + [k + "=" + v]
    elif word == "WORKDIR":
        expected["WorkingDir"] = rest.strip()
    elif word == "COPY":
        parts = [p for p in shlex.split(rest) if not p.startswith("--")]
        copies.append((parts[:-1], parts[-1]))
    elif word == "ARG":
        pass
    else:
        bad("Dockerfile instruction %s in the last stage is not understood by this check" % word)

check("distroless/cc-debian12:nonroot" in from_line, "the Dockerfile's runtime base is distroless cc-debian12:nonroot", from_line)
for key in ("User", "Entrypoint", "Cmd", "Env", "WorkingDir", "ExposedPorts", "Labels"):
    want = expected[key]
    got = cfg.get(key)
    if key in ("ExposedPorts", "Labels") and not want:
        want = None
        got = got or None
    check(got == want, "config %s = %s" % (key, json.dumps(want)), "image has " + json.dumps(got))

# files the Dockerfile copies: the release binaries, byte for byte
def sha(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()

for sources, dest in copies:
    for src in sources:
        name = os.path.basename(src)
        target = dest.rstrip("/") + "/" + name if dest.endswith("/") else dest
        local = os.path.join(release, name)
        in_image = os.path.join(rootfs, target.lstrip("/"))
        if not os.path.exists(in_image):
            bad("%s is in the image" % target); continue
        st = os.stat(in_image)
        check(os.path.exists(local) and sha(local) == sha(in_image),
              "%s is the release binary %s (sha256)" % (target, local))
        check(st.st_mode & 0o111 == 0o111 and st.st_uid == 0,
              "%s is executable by anyone and owned by root" % target, oct(st.st_mode))

# the base: distroless's packages, user, directories
status = set(os.listdir(os.path.join(rootfs, "var/lib/dpkg/status.d"))) if os.path.isdir(os.path.join(rootfs, "var/lib/dpkg/status.d")) else set()
check(status == base_packages, "Debian packages (dpkg status.d) are distroless cc-debian12's: %s" % " ".join(sorted(base_packages)),
      "image has " + " ".join(sorted(status)))
passwd = open(os.path.join(rootfs, "etc/passwd")).read().splitlines()
check(any(l.startswith("nonroot:x:65532:65532:") and ":/home/nonroot:" in l for l in passwd),
      "user nonroot 65532:65532 with home /home/nonroot in /etc/passwd")
home = files.get("/home/nonroot")
check(home is not None and home["uid"] == 65532, "/home/nonroot belongs to 65532")
tmp = files.get("/tmp")
check(tmp is not None and tmp["mode"] == "1777", "/tmp has mode 1777", str(tmp and tmp["mode"]))
bundle = os.path.join(rootfs, "etc/ssl/certs/ca-certificates.crt")
check(os.path.exists(bundle) and open(bundle).read().count("BEGIN CERTIFICATE") > 100,
      "CA bundle /etc/ssl/certs/ca-certificates.crt (SSL_CERT_FILE)")
shells = [p for p in ("/bin/sh", "/bin/bash", "/usr/bin/sh", "/bin/busybox") if p in files]
check(not shells, "no shell in the image (distroless has none)", " ".join(shells))

# every shared library the binaries load, as ldd resolves them on this (same) Debian
bins = [os.path.join(release, n) for n in ("hermes-gateway", "hermes-consumer")]
out = subprocess.run(["ldd"] + bins, capture_output=True, text=True).stdout
libs = sorted(set(re.findall(r"=> (/\S+)", out) + re.findall(r"^\s+(/\S+)", out, re.M)))
missing = []
for lib in libs:
    if not (os.path.exists(os.path.join(rootfs, lib.lstrip("/"))) or
            os.path.exists(os.path.join(rootfs, "usr", lib.lstrip("/")))):
        missing.append(lib)
check(not missing, "shared libraries of the binaries are in the image: %s" % " ".join(os.path.basename(l) for l in libs),
      "missing " + " ".join(missing))
PY
)

# --- run: read-only root filesystem, user 65532, under runc ----------------------
if ! command -v runc >/dev/null; then
  bad "runc is not installed (apt-get install runc): run checks skipped"
else
  mkdir -p "$WORK/bundle"
  mv "$WORK/rootfs" "$WORK/bundle/rootfs"
  port=$((20000 + RANDOM % 20000))
  iport=$((port + 1))
  # spec: read-only root, uid/gid 65532, no capabilities beyond runc's defaults
  # dropped to none, the host's network namespace (to reach /healthz)
  run_spec() { # run_spec ARGS_JSON ENV_JSON
    (cd "$WORK/bundle" && rm -f config.json && runc spec)
    jq --argjson args "$1" --argjson env "$2" '
      .process.args = $args | .process.terminal = false |
      .process.user = {uid: 65532, gid: 65532} | .process.cwd = "/home/nonroot" |
      .process.env = ["PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
                      "SSL_CERT_FILE=/etc/ssl/certs/ca-certificates.crt"] + $env |
      .process.capabilities = {bounding: [], effective: [], permitted: [], ambient: []} |
      .process.noNewPrivileges = true |
      .root.readonly = true |
      .linux.namespaces |= map(select(.type != "network")) |
      .hostname = "hermes-image-check"' "$WORK/bundle/config.json" > "$WORK/bundle/config.new"
    mv "$WORK/bundle/config.new" "$WORK/bundle/config.json"
  }
  for b in hermes-gateway hermes-consumer; do
    run_spec "[\"$b\", \"--version\"]" '[]'
    if out=$(cd "$WORK/bundle" && timeout 20 runc run "$CONTAINER" 2>&1); then
      ok "$b --version as 65532 on a read-only root: $out"
    else
      bad "$b --version as 65532 on a read-only root: $out"
    fi
    runc delete -f "$CONTAINER" >/dev/null 2>&1 || true
  done
  run_spec '["hermes-gateway", "standalone"]' \
    "[\"HERMES_LISTEN=127.0.0.1:$port\", \"HERMES_INTERNAL_LISTEN=127.0.0.1:$iport\"]"
  (cd "$WORK/bundle" && timeout 60 runc run "$CONTAINER" >"$WORK/standalone.log" 2>&1) &
  healthy=''
  for _ in $(seq 1 100); do
    if curl -sf --max-time 1 "http://127.0.0.1:$iport/healthz" >/dev/null 2>&1; then healthy=1; break; fi
    sleep 0.2
  done
  page=$(curl -sf --max-time 2 "http://127.0.0.1:$port/" | head -c 200 || true)
  if [ -n "$healthy" ] && [ -n "$page" ]; then
    ok "hermes-gateway standalone as 65532 on a read-only root: /healthz ok, demo page served"
  else
    bad "hermes-gateway standalone as 65532 on a read-only root: $(tail -n 5 "$WORK/standalone.log")"
  fi
  runc kill "$CONTAINER" TERM >/dev/null 2>&1 || true
  wait || true
fi

printf 'image check: %d passed, %d failed\n' "$passed" "$failed"
[ "$failed" -eq 0 ]
