#!/usr/bin/env python3
"""Write an OCI image (one layer) as an OCI image layout tar, without a container engine.

Usage:
  oci-image.py --rootfs DIR --name NAME:TAG --out IMAGE.tar [options]
  oci-image.py --inspect IMAGE.tar        print the config and the file list (JSON)

The layer is DIR packed as one uncompressed tar in a reproducible way: entries sorted,
mtimes set to SOURCE_DATE_EPOCH (default 0), owners from --chown rules (default 0:0),
permissions kept. The result imports with `ctr -n k8s.io images import IMAGE.tar`
(the name is in the io.containerd.image.name annotation) and is a valid OCI layout
(`tar -x` it and any OCI tool reads it).

Options:
  --user UID[:GID]          Config.User
  --entrypoint JSON         Config.Entrypoint, a JSON list
  --cmd JSON                Config.Cmd, a JSON list
  --env K=V                 Config.Env (repeatable, in order)
  --workdir DIR             Config.WorkingDir
  --expose PORT/PROTO       Config.ExposedPorts (repeatable)
  --label K=V               Config.Labels (repeatable)
  --chown PATH=UID:GID      owner of PATH and everything under it (repeatable; longest
                            prefix wins); default 0:0
  --arch ARCH               default amd64

Standard library only. Used by scripts/kube/node.sh (pause and test images) and
scripts/image/build.sh (the Hermes image).
"""

import argparse
import datetime
import hashlib
import io
import json
import os
import stat
import sys
import tarfile

OCI_INDEX = "application/vnd.oci.image.index.v1+json"
OCI_MANIFEST = "application/vnd.oci.image.manifest.v1+json"
OCI_CONFIG = "application/vnd.oci.image.config.v1+json"
OCI_LAYER = "application/vnd.oci.image.layer.v1.tar"


def normalize_name(name):
    """docker.io/library/NAME:TAG, as containerd and the kubelet spell a short name."""
    repo, _, tag = name.rpartition(":")
    if not repo or "/" in tag:
        repo, tag = name, "latest"
    first = repo.split("/", 1)[0]
    if "/" not in repo:
        repo = "docker.io/library/" + repo
    elif "." not in first and ":" not in first and first != "localhost":
        repo = "docker.io/" + repo
    return repo + ":" + tag, tag


def owner_for(rel, rules):
    best = None
    for path, ids in rules:
        p = path.strip("/")
        if p == "" or rel == p or rel.startswith(p + "/"):
            if best is None or len(p) > len(best[0]):
                best = (p, ids)
    return best[1] if best else (0, 0)


def layer_tar(rootfs, rules, mtime):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tar:
        entries = []
        for dirpath, dirnames, filenames in os.walk(rootfs):
            dirnames.sort()
            for n in dirnames + sorted(filenames):
                entries.append(os.path.join(dirpath, n))
        for full in sorted(entries, key=lambda p: os.path.relpath(p, rootfs)):
            rel = os.path.relpath(full, rootfs)
            st = os.lstat(full)
            info = tarfile.TarInfo(rel)
            info.mode = stat.S_IMODE(st.st_mode)
            info.uid, info.gid = owner_for(rel, rules)
            info.uname = info.gname = ""
            info.mtime = mtime
            if stat.S_ISDIR(st.st_mode):
                info.type = tarfile.DIRTYPE
                tar.addfile(info)
            elif stat.S_ISLNK(st.st_mode):
                info.type = tarfile.SYMTYPE
                info.linkname = os.readlink(full)
                tar.addfile(info)
            elif stat.S_ISREG(st.st_mode):
                info.size = st.st_size
                with open(full, "rb") as f:
                    tar.addfile(info, f)
            else:
                sys.exit("oci-image: unsupported file type: " + full)
    return buf.getvalue()


def blob(data):
    return "sha256:" + hashlib.sha256(data).hexdigest(), data


def build(a):
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", "0"))
    rules = []
    for r in a.chown:
        path, _, ids = r.partition("=")
        uid, _, gid = ids.partition(":")
        rules.append((path, (int(uid), int(gid or uid))))
    layer = layer_tar(a.rootfs, rules, mtime)
    layer_digest, _ = blob(layer)
    cfg = {}
    if a.user:
        cfg["User"] = a.user
    if a.env:
        cfg["Env"] = a.env
    if a.entrypoint:
        cfg["Entrypoint"] = json.loads(a.entrypoint)
    if a.cmd:
        cfg["Cmd"] = json.loads(a.cmd)
    if a.workdir:
        cfg["WorkingDir"] = a.workdir
    if a.expose:
        cfg["ExposedPorts"] = {p if "/" in p else p + "/tcp": {} for p in a.expose}
    if a.label:
        cfg["Labels"] = dict(l.split("=", 1) for l in a.label)
    created = datetime.datetime.fromtimestamp(mtime, datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    config = {
        "created": created,
        "architecture": a.arch,
        "os": "linux",
        "config": cfg,
        "rootfs": {"type": "layers", "diff_ids": [layer_digest]},
        "history": [{"created": created, "created_by": "scripts/image/oci-image.py"}],
    }
    config_digest, config_bytes = blob(json.dumps(config, sort_keys=True, separators=(",", ":")).encode())
    manifest = {
        "schemaVersion": 2,
        "mediaType": OCI_MANIFEST,
        "config": {"mediaType": OCI_CONFIG, "digest": config_digest, "size": len(config_bytes)},
        "layers": [{"mediaType": OCI_LAYER, "digest": layer_digest, "size": len(layer)}],
    }
    manifest_digest, manifest_bytes = blob(json.dumps(manifest, sort_keys=True, separators=(",", ":")).encode())
    full, tag = normalize_name(a.name)
    index = {
        "schemaVersion": 2,
        "mediaType": OCI_INDEX,
        "manifests": [{
            "mediaType": OCI_MANIFEST, "digest": manifest_digest, "size": len(manifest_bytes),
            "platform": {"architecture": a.arch, "os": "linux"},
            "annotations": {"io.containerd.image.name": full, "org.opencontainers.image.ref.name": tag},
        }],
    }
    files = [
        ("oci-layout", json.dumps({"imageLayoutVersion": "1.0.0"}).encode()),
        ("index.json", json.dumps(index, sort_keys=True, indent=1).encode()),
    ]
    for d, data in ((layer_digest, layer), (config_digest, config_bytes), (manifest_digest, manifest_bytes)):
        files.append(("blobs/sha256/" + d.split(":", 1)[1], data))
    tmp = a.out + ".tmp"
    with tarfile.open(tmp, "w", format=tarfile.PAX_FORMAT) as out:
        for d in ("blobs", "blobs/sha256"):
            info = tarfile.TarInfo(d)
            info.type, info.mode, info.mtime = tarfile.DIRTYPE, 0o755, mtime
            out.addfile(info)
        for name, data in files:
            info = tarfile.TarInfo(name)
            info.size, info.mode, info.mtime = len(data), 0o644, mtime
            out.addfile(info, io.BytesIO(data))
    os.replace(tmp, a.out)
    print(json.dumps({"name": full, "manifest": manifest_digest, "config": config_digest,
                      "layer": layer_digest, "layer_bytes": len(layer)}))


def inspect(path):
    with tarfile.open(path) as t:
        def read(name):
            return t.extractfile(name).read()
        index = json.loads(read("index.json"))
        m = index["manifests"][0]
        manifest = json.loads(read("blobs/sha256/" + m["digest"].split(":", 1)[1]))
        config = json.loads(read("blobs/sha256/" + manifest["config"]["digest"].split(":", 1)[1]))
        files = []
        for layer in manifest["layers"]:
            data = read("blobs/sha256/" + layer["digest"].split(":", 1)[1])
            mode = "r:gz" if layer["mediaType"].endswith("gzip") else "r"
            with tarfile.open(fileobj=io.BytesIO(data), mode=mode) as lt:
                for e in lt.getmembers():
                    kind = "d" if e.isdir() else "l" if e.issym() else "f"
                    files.append({"path": "/" + e.name.lstrip("./"), "type": kind, "mode": "%04o" % e.mode,
                                  "uid": e.uid, "gid": e.gid, "size": e.size,
                                  **({"link": e.linkname} if e.issym() else {})})
    print(json.dumps({"name": m.get("annotations", {}).get("io.containerd.image.name"),
                      "config": config, "files": files}, indent=1))


def main():
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--inspect")
    p.add_argument("--rootfs")
    p.add_argument("--name")
    p.add_argument("--out")
    p.add_argument("--user")
    p.add_argument("--entrypoint")
    p.add_argument("--cmd")
    p.add_argument("--env", action="append", default=[])
    p.add_argument("--workdir")
    p.add_argument("--expose", action="append", default=[])
    p.add_argument("--label", action="append", default=[])
    p.add_argument("--chown", action="append", default=[])
    p.add_argument("--arch", default="amd64")
    a = p.parse_args()
    if a.inspect:
        inspect(a.inspect)
    elif a.rootfs and a.name and a.out:
        build(a)
    else:
        p.error("--rootfs, --name and --out are required (or --inspect IMAGE.tar)")


if __name__ == "__main__":
    main()
