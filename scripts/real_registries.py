#!/usr/bin/env python3
"""Fetch / build / cache the real registries the contract tests run against (``make real-registries``).

Standard library only. Idempotent: a cached, working build is kept and the run takes a second.

- **Consul v1.16.1**, the last release under the MPL-2.0 (1.17 and later are under the BSL, not
  an open-source licence). Built from source with the local Go toolchain as a dependency of a
  throwaway module in a temporary directory (``go install`` refuses Consul: its go.mod has
  ``replace`` directives). ``go.sum`` is seeded with Consul's own (its hashes came from the
  checksum database at release time); three modules whose checksum-database lookups the module
  mirror does not answer are fetched with ``GONOSUMDB`` — their hashes are the ones in that seeded
  ``go.sum``. Takes about 5 minutes on 2 cores the first time; the Go module and build caches make
  a rebuild faster.
- **Nacos**: no 2.x server artifact can be had through the package registries this project may
  use (Maven Central publishes only the client-side modules for 2.x; the Go module proxy does not
  serve the repository). The recipe still makes its attempt (``mvn dependency:get`` of a pinned
  ``nacos-console``; a few seconds) and records why it failed.

The cache lives outside the repository:
``${GRAYLB_CACHE:-${XDG_CACHE_HOME:-~/.cache}/graylb}`` with ``consul-1.16.1/consul`` and
``manifest.json``::

    {"consul": {"version": "1.16.1", "binary": "/…/consul-1.16.1/consul"},
     "nacos": {"unavailable": "…why…"}}

A backend that failed to build is recorded as ``{"failed": "…"}``. The contract tests
(``tests/contract``) read the manifest: in CI a backend recorded as ``unavailable`` is skipped
with that reason, a missing or failed one fails the run.

Exit status: 0 when everything obtainable was obtained (Consul built or cached), 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

CONSUL_VERSION = "1.16.1"
CONSUL_MODULE = "github.com/hashicorp/consul"
# The module mirror answers no checksum-database lookup for these (the lookup is a 404); their
# hashes come from Consul's own go.sum, copied in before `go get`.
CONSUL_NOSUMDB = (
    "github.com/hashicorp/consul/envoyextensions",
    "github.com/hashicorp/consul/troubleshoot",
    "github.com/hashicorp/hcp-sdk-go",
)
NACOS_VERSION = "2.5.1"
NACOS_ARTIFACT = f"com.alibaba.nacos:nacos-console:{NACOS_VERSION}:pom"

_URL = re.compile(r"[a-z][a-z0-9+.-]*://\S+", re.IGNORECASE)


def cache_dir() -> Path:
    """Where real registries are cached (shared with tests/contract/conftest.py)."""
    explicit = os.environ.get("GRAYLB_CACHE")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "graylb"


def _clean(text: str) -> str:
    """One line of a tool's error, with URLs (registry host names) left out."""
    return " ".join(_URL.sub("<url>", text).split())[:300]


def _run(
    cmd: list[str], cwd: Path, env: dict[str, str], log: list[str], timeout: float
) -> subprocess.CompletedProcess[str]:
    log.append("$ " + " ".join(cmd))
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout)
    log.append(proc.stdout + proc.stderr)
    return proc


def consul_version_of(binary: Path) -> str | None:
    """``1.16.1`` from ``consul version``; None when it does not run."""
    try:
        out = subprocess.run(
            [str(binary), "version"], stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=30
        ).stdout
    except (OSError, subprocess.SubprocessError):
        return None
    m = re.match(r"Consul v(\S+)", out.strip())
    return m.group(1) if m else None


def build_consul(target: Path, verbose: bool) -> tuple[dict[str, str], str]:
    """(manifest entry, status line)."""
    if target.is_file() and consul_version_of(target) == CONSUL_VERSION:
        return {"version": CONSUL_VERSION, "binary": str(target)}, f"consul: cached v{CONSUL_VERSION} at {target}"
    go = shutil.which("go")
    if go is None:
        reason = "no Go toolchain on PATH (needed to build Consul from source)"
        return {"failed": reason}, f"consul: FAILED: {reason}"
    started = time.monotonic()
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # build with the Go that is here; never download a toolchain
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -buildvcs=false -mod=mod").strip()
    env["GONOSUMDB"] = ",".join(filter(None, [env.get("GONOSUMDB", ""), *CONSUL_NOSUMDB]))
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="graylb-consul-build-") as tmp:
        work = Path(tmp)
        try:
            steps_ok = True
            for cmd in (
                ["go", "mod", "init", "consulbuild"],
                ["go", "mod", "download", "-json", f"{CONSUL_MODULE}@v{CONSUL_VERSION}"],
            ):
                proc = _run(cmd, work, env, log, 900)
                if proc.returncode != 0:
                    steps_ok = False
                    break
            if steps_ok:
                info = json.loads(proc.stdout)
                seed = (Path(info["Dir"]) / "go.sum").read_text()
                (work / "go.sum").write_text(seed)  # written fresh: the module cache copy is read-only
                for cmd in (
                    ["go", "get", f"{CONSUL_MODULE}@v{CONSUL_VERSION}"],
                    ["go", "build", "-o", str(work / "consul"), CONSUL_MODULE],
                ):
                    proc = _run(cmd, work, env, log, 3600)
                    if proc.returncode != 0:
                        steps_ok = False
                        break
            if not steps_ok:
                tail = [line for line in "".join(log[-1:]).splitlines() if line.strip()]
                reason = _clean(tail[-1] if tail else "go build failed")
                if verbose:
                    print("\n".join(log), file=sys.stderr)
                return {"failed": reason}, f"consul: FAILED to build v{CONSUL_VERSION}: {reason}"
            built = work / "consul"
            if consul_version_of(built) != CONSUL_VERSION:
                reason = f"the built binary does not report v{CONSUL_VERSION}"
                return {"failed": reason}, f"consul: FAILED: {reason}"
            target.parent.mkdir(parents=True, exist_ok=True)
            partial = target.with_name(target.name + ".partial")
            shutil.copy2(built, partial)
            os.replace(partial, target)  # atomic: a half-copied binary never looks cached
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            if verbose:
                print("\n".join(log), file=sys.stderr)
            reason = _clean(f"{type(exc).__name__}: {exc}")
            return {"failed": reason}, f"consul: FAILED to build v{CONSUL_VERSION}: {reason}"
    took = time.monotonic() - started
    return {
        "version": CONSUL_VERSION,
        "binary": str(target),
    }, f"consul: built v{CONSUL_VERSION} from source in {took:.0f}s -> {target}"


def attempt_nacos() -> tuple[dict[str, str], str]:
    """Try to obtain a Nacos 2.x server through Maven Central; record why it is unavailable."""
    mvn = shutil.which("mvn")
    if mvn is None:
        reason = (
            f"no Maven (mvn) on PATH to fetch {NACOS_ARTIFACT}; and Maven Central does not publish a Nacos 2.x server"
        )
        return {"unavailable": reason}, f"nacos: unavailable: {reason}"
    cmd = [mvn, "-B", "-q", "-U", "dependency:get", f"-Dartifact={NACOS_ARTIFACT}", "-Dtransitive=false"]
    try:
        proc = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, timeout=300)
        out, rc = proc.stdout, proc.returncode
    except (OSError, subprocess.SubprocessError) as exc:
        out, rc = f"{type(exc).__name__}: {exc}", -1
    if rc == 0:
        # Never happened so far. If it does, the server still has to be assembled (nacos-console
        # with its dependencies, run standalone with an embedded database): not implemented yet.
        reason = (
            f"{NACOS_ARTIFACT} resolved, but assembling a standalone server from it is not implemented in "
            "scripts/real_registries.py yet"
        )
        return {"unavailable": reason}, f"nacos: unavailable: {reason}"
    text = re.sub(r"\x1b\[[0-9;]*m", "", out)
    if re.search(r"not found|could not find|missing:", text, re.IGNORECASE):
        detail = "artifact not found"
    else:
        first = next(
            (
                line.replace("[ERROR]", "").strip()
                for line in text.splitlines()
                if line.startswith("[ERROR]") and line.strip() != "[ERROR]"
            ),
            "",
        )
        detail = _clean(first or text.strip() or f"exit {rc}")
    reason = (
        f"no Nacos {NACOS_VERSION} server from Maven Central (mvn dependency:get {NACOS_ARTIFACT}: {detail}); "
        "only the 2.x client modules are published there"
    )
    return {"unavailable": reason}, f"nacos: unavailable: {reason}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="print the build log when a step fails")
    parser.add_argument(
        "--skip-nacos", action="store_true", help="do not make the Nacos attempt (keep what the manifest says)"
    )
    args = parser.parse_args(argv)

    cache = cache_dir()
    cache.mkdir(parents=True, exist_ok=True)
    manifest_path = cache / "manifest.json"
    try:
        manifest = json.loads(manifest_path.read_text())
        if not isinstance(manifest, dict):
            manifest = {}
    except (OSError, ValueError):
        manifest = {}

    consul_dir = cache / f"consul-{CONSUL_VERSION}"
    if consul_dir.exists() and not consul_dir.is_dir():
        consul_dir.unlink()  # a stray file where the version directory belongs
    consul_entry, consul_line = build_consul(consul_dir / "consul", args.verbose)
    manifest["consul"] = consul_entry
    print(consul_line, flush=True)

    if not args.skip_nacos or "nacos" not in manifest:
        manifest["nacos"], nacos_line = attempt_nacos()
    else:
        nacos_line = f"nacos: {json.dumps(manifest['nacos'])} (attempt skipped)"
    print(nacos_line, flush=True)

    tmp = manifest_path.with_name("manifest.json.partial")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, manifest_path)
    print(f"manifest: {manifest_path}", flush=True)
    return 0 if "failed" not in consul_entry else 1


if __name__ == "__main__":
    raise SystemExit(main())
