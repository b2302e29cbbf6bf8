#!/usr/bin/env python3
"""Fetch / build / cache the real servers the tests run against (``make real-registries``).

Standard library only. Idempotent: a cached, working build is kept and the run takes a second.
Cold build times below were measured on this project's 2-core machines (BENCHMARKS.md has the
figures of a whole cold CI run).

- **Consul v1.16.1**, the last release under the MPL-2.0 (1.17 and later are under the BSL, not
  an open-source licence). Built from source with the local Go toolchain as a dependency of a
  throwaway module in a temporary directory (``go install`` refuses Consul: its go.mod has
  ``replace`` directives). ``go.sum`` is seeded with Consul's own (its hashes came from the
  checksum database at release time); three modules whose checksum-database lookups the module
  mirror does not answer are fetched with ``GONOSUMDB`` — their hashes are the ones in that seeded
  ``go.sum``. Takes about 5 minutes on 2 cores the first time; the Go module and build caches make
  a rebuild faster.
- **Prometheus 3.16.0** (module tag ``v0.316.0``; ``prometheus`` and ``promtool``) for
  tests/monitoring: what users run now. Built the same way, version stamped with ``-ldflags``;
  about 5 minutes cold.
- **Prometheus 2.42.0 from Debian** (package ``prometheus``, with ``promtool``): ``apt-get download``
  and ``dpkg-deb -x`` into the cache -- no root, no service started; a second or two. The promtool
  tests run on both versions.
- **nginx 1.22.1 from Debian** (package ``nginx``; its ``usr/sbin/nginx`` only -- ``nginx-common``'s
  /etc/nginx is not needed, the libraries it links are Debian's base system): fetched and unpacked
  the same way, for ``benchmarks/peer_gateway.py`` (graylb vs the gray gateway hop it removes), which
  writes its own config and runs it in a temporary prefix.
- **Jaeger v1.76.0** (``cmd/jaeger``, the OpenTelemetry-Collector-based all-in-one) for the tracing
  test: built like Consul; about 4 minutes cold.
- **Nacos: rnacos 0.8.8**, a Nacos server re-implemented in Rust (Apache-2.0), the one real,
  independently written implementation of Nacos's Open API obtainable here (Maven Central
  publishes only Nacos's 2.x client modules; the Go module proxy refuses its source). Built from
  crates.io with ``cargo install --locked``: 10-17 minutes on 2 cores the first time.

The cache lives outside the repository:
``${GRAYLB_CACHE:-${XDG_CACHE_HOME:-~/.cache}/graylb}`` with one directory per program and version
(``consul-1.16.1/consul``, ``prometheus-3.16.0/{prometheus,promtool}``, ...) and ``manifest.json``::

    {"consul": {"version": "1.16.1", "binary": "/…/consul-1.16.1/consul"},
     "prometheus": {"version": "3.16.0", "binary": "/…/prometheus", "promtool": "/…/promtool"},
     "prometheus-debian": {"version": "2.42.0", "binary": "…", "promtool": "…"},
     "nginx": {"version": "1.22.1", "binary": "/…/nginx-debian/nginx"},
     "jaeger": {"version": "1.76.0", "binary": "/…/jaeger-1.76.0/jaeger"},
     "nacos": {"version": "0.8.8", "binary": "/…/rnacos-0.8.8/rnacos", "server": "rnacos"}}

A program that failed to build is recorded as ``{"failed": "…"}``, a Debian one apt cannot get
as ``{"unavailable": "…"}``. The tests (``tests/contract``, ``tests/monitoring``) read the
manifest: in CI a program recorded as ``unavailable`` is skipped with that reason, a missing or
failed one fails the run.

Exit status: 0 when everything obtainable was obtained (built or cached), 1 otherwise.
"""

from __future__ import annotations

import argparse
import dataclasses
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


@dataclasses.dataclass(frozen=True)
class GoProgram:
    """A program built from the Go module proxy at a pinned version into ``<cache>/<key>-<version>/``."""

    key: str  # manifest key and cache directory prefix
    version: str  # what the binary must report
    module: str
    tag: str  # the module version to fetch
    binaries: dict[str, str]  # file name in the cache directory -> package path
    version_args: tuple[str, ...]
    version_pattern: str  # a regex whose group(1) is the version the binary reports
    ldflags: str = ""
    seed_go_sum: bool = False  # start go.sum from the module's own (when the proxy's checksum lookups fall short)
    nosumdb: tuple[str, ...] = ()


CONSUL = GoProgram(
    key="consul",
    version=CONSUL_VERSION,
    module=CONSUL_MODULE,
    tag=f"v{CONSUL_VERSION}",
    binaries={"consul": CONSUL_MODULE},
    version_args=("version",),
    version_pattern=r"Consul v(\S+)",
    seed_go_sum=True,
    nosumdb=CONSUL_NOSUMDB,
)
PROMETHEUS = GoProgram(
    key="prometheus",
    version="3.16.0",
    module="github.com/prometheus/prometheus",
    tag="v0.316.0",  # Prometheus 3.x is tagged v0.3MM.P for Go modules
    binaries={
        "prometheus": "github.com/prometheus/prometheus/cmd/prometheus",
        "promtool": "github.com/prometheus/prometheus/cmd/promtool",
    },
    version_args=("--version",),
    version_pattern=r"version (\S+)",
    ldflags="-X github.com/prometheus/common/version.Version=3.16.0",
)
JAEGER = GoProgram(
    key="jaeger",
    version="1.76.0",
    module="github.com/jaegertracing/jaeger",
    tag="v1.76.0",
    binaries={"jaeger": "github.com/jaegertracing/jaeger/cmd/jaeger"},
    version_args=("version",),
    version_pattern=r'"gitVersion":"v(\S+?)"',
    ldflags="-X github.com/jaegertracing/jaeger/internal/version.latestVersion=v1.76.0",
)


def _probe(binary: Path, program: GoProgram | DebianProgram) -> tuple[str | None, str]:
    """(the version ``binary`` reports with ``program.version_args``, on stdout or stderr, or
    None; what it printed -- the error when it did not run)."""
    try:
        out = subprocess.run(
            [str(binary), *program.version_args],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.SubprocessError) as exc:
        return None, f"{type(exc).__name__}: {exc}"
    m = re.search(program.version_pattern, out)
    return (m.group(1) if m else None), out


def version_of(binary: Path, program: GoProgram | DebianProgram) -> str | None:
    """The version ``binary`` reports (``program.version_args``); None when it does not run."""
    return _probe(binary, program)[0]


def consul_version_of(binary: Path) -> str | None:
    """``1.16.1`` from ``consul version``; None when it does not run."""
    return version_of(binary, CONSUL)


def _entry(program: GoProgram, directory: Path) -> dict[str, str]:
    entry = {"version": program.version}
    for i, name in enumerate(program.binaries):
        entry["binary" if i == 0 else name] = str(directory / name)
    return entry


def _built(entry: dict[str, str], seconds: float) -> dict[str, str]:
    """``entry`` with when and how long its build took: cold-cache CI cost is read from here."""
    when = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    return {**entry, "built_at": when, "build_seconds": f"{seconds:.0f}"}


def _carry_build_record(old: object, new: dict[str, str]) -> dict[str, str]:
    """A cached entry keeps the build record of the run that built it (same version, same binary)."""
    if not isinstance(old, dict) or "built_at" in new or "failed" in new:
        return new
    if old.get("version") != new.get("version") or old.get("binary") != new.get("binary"):
        return new
    kept = {k: str(old[k]) for k in ("built_at", "build_seconds") if k in old}
    return {**new, **kept}


def build_go_program(program: GoProgram, directory: Path, verbose: bool) -> tuple[dict[str, str], str]:
    """(manifest entry, status line) for ``program`` built into ``directory``."""
    name, version = program.key, program.version
    if all(version_of(directory / b, program) == version for b in program.binaries):
        return _entry(program, directory), f"{name}: cached v{version} at {directory}"
    if shutil.which("go") is None:
        reason = f"no Go toolchain on PATH (needed to build {name} from source)"
        return {"failed": reason}, f"{name}: FAILED: {reason}"
    started = time.monotonic()
    env = dict(os.environ)
    env["GOTOOLCHAIN"] = "local"  # build with the Go that is here; never download a toolchain
    env["GOFLAGS"] = (env.get("GOFLAGS", "") + " -buildvcs=false -mod=mod").strip()
    if program.nosumdb:
        env["GONOSUMDB"] = ",".join(filter(None, [env.get("GONOSUMDB", ""), *program.nosumdb]))
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix=f"graylb-{name}-build-") as tmp:
        work = Path(tmp)
        ok = True

        def step(*cmd: str, timeout: float = 3600) -> subprocess.CompletedProcess[str] | None:
            nonlocal ok
            if not ok:
                return None
            proc = _run(list(cmd), work, env, log, timeout)
            ok = proc.returncode == 0
            return proc

        try:
            step("go", "mod", "init", f"{name}build")
            if program.seed_go_sum:
                proc = step("go", "mod", "download", "-json", f"{program.module}@{program.tag}", timeout=900)
                if ok and proc is not None:
                    seed = (Path(json.loads(proc.stdout)["Dir"]) / "go.sum").read_text()
                    (work / "go.sum").write_text(seed)  # written fresh: the module cache copy is read-only
            step("go", "get", *(f"{pkg}@{program.tag}" for pkg in program.binaries.values()))
            for binary, pkg in program.binaries.items():
                flags = ["-ldflags", program.ldflags] if program.ldflags else []
                step("go", "build", *flags, "-o", str(work / binary), pkg)
            if not ok:
                tail = [line for line in "".join(log[-1:]).splitlines() if line.strip()]
                reason = _clean(tail[-1] if tail else "go build failed")
                if verbose:
                    print("\n".join(log), file=sys.stderr)
                return {"failed": reason}, f"{name}: FAILED to build v{version}: {reason}"
            for binary in program.binaries:
                if version_of(work / binary, program) != version:
                    reason = f"the built {binary} does not report v{version}"
                    return {"failed": reason}, f"{name}: FAILED: {reason}"
            directory.mkdir(parents=True, exist_ok=True)
            for binary in program.binaries:
                target = directory / binary
                partial = target.with_name(binary + ".partial")
                shutil.copy2(work / binary, partial)
                os.replace(partial, target)  # atomic: a half-copied binary never looks cached
        except (OSError, ValueError, KeyError, subprocess.SubprocessError) as exc:
            if verbose:
                print("\n".join(log), file=sys.stderr)
            reason = _clean(f"{type(exc).__name__}: {exc}")
            return {"failed": reason}, f"{name}: FAILED to build v{version}: {reason}"
    took = time.monotonic() - started
    entry = _built(_entry(program, directory), took)
    return entry, f"{name}: built v{version} from source in {took:.0f}s -> {directory}"


def build_consul(target: Path, verbose: bool) -> tuple[dict[str, str], str]:
    """(manifest entry, status line) for Consul built as ``target``."""
    return build_go_program(CONSUL, target.parent, verbose)


@dataclasses.dataclass(frozen=True)
class DebianProgram:
    """A program taken from a Debian package (``apt-get download`` + ``dpkg-deb -x``: no root, no
    maintainer scripts, no service) into a cache directory: whatever version apt offers."""

    key: str  # manifest key and status-line name
    package: str
    binaries: dict[str, str]  # file name in the cache directory -> path inside the package
    version_args: tuple[str, ...]
    version_pattern: str  # a regex whose group(1) is the version the binary reports (stdout or stderr)
    purpose: str  # why it is fetched: said when apt is not there


DEBIAN_PROMETHEUS = DebianProgram(
    key="prometheus-debian",
    package="prometheus",
    binaries={"prometheus": "usr/bin/prometheus", "promtool": "usr/bin/promtool"},
    version_args=("--version",),
    version_pattern=r"version (\d+\.\d+\.\d+)",
    purpose="Debian's prometheus package is the second Prometheus version tested",
)
# Debian 12: nginx 1.22.1. Only the binary is taken: nginx-common (the package it depends on) holds
# /etc/nginx and the service files, and the benchmark writes its own nginx.conf; the libraries it
# links (libpcre2-8, libssl3, libcrypt1, zlib) are in Debian's base system.
DEBIAN_NGINX = DebianProgram(
    key="nginx",
    package="nginx",
    binaries={"nginx": "usr/sbin/nginx"},
    version_args=("-v",),  # prints "nginx version: nginx/1.22.1" on stderr
    version_pattern=r"nginx/(\d+\.\d+\.\d+)",
    purpose="Debian's nginx is the gateway benchmarks/peer_gateway.py compares graylb with",
)


def debian_package(package: str, work: Path) -> tuple[Path | None, str]:
    """Debian's ``package`` fetched with ``apt-get download`` into ``work`` and unpacked there with
    ``dpkg-deb -x`` (nothing installed, no maintainer script run): (the unpacked tree, the .deb's
    file name), or (None, why not)."""
    os.chmod(work, 0o755)  # apt downloads as its own user where it can
    attempts = [["apt-get", "download", "-q", package]]
    if os.geteuid() == 0:
        attempts.append(["apt-get", "update", "-q"])  # package lists missing or stale: refresh once
        attempts.append(attempts[0])
    proc = None
    try:
        for cmd in attempts:
            proc = subprocess.run(cmd, cwd=work, capture_output=True, text=True, timeout=600)
            if cmd[1] == "download" and proc.returncode == 0:
                break
        debs = sorted(work.glob(f"{package}_*.deb"))
        if not debs:
            lines = (proc.stderr or proc.stdout or "").strip().splitlines() if proc else []
            detail = _clean(lines[-1]) if lines else ""
            return None, f"apt-get download {package} failed: {detail or 'no package file'}"
        unpacked = work / "x"
        subprocess.run(["dpkg-deb", "-x", str(debs[0]), str(unpacked)], check=True, capture_output=True, timeout=120)
    except (OSError, subprocess.SubprocessError) as exc:
        return None, _clean(f"{type(exc).__name__}: {exc}")
    return unpacked, debs[0].name


def debian_program(program: DebianProgram, directory: Path) -> tuple[dict[str, str], str]:
    """(manifest entry, status line) for ``program`` unpacked from its Debian package into
    ``directory``; recorded as unavailable, with why, where apt cannot get it."""
    name = program.key

    def entry(version: str) -> dict[str, str]:
        out = {"version": version}
        for i, binary in enumerate(program.binaries):
            out["binary" if i == 0 else binary] = str(directory / binary)
        return out

    versions = [version_of(directory / binary, program) for binary in program.binaries]
    if versions[0] and versions.count(versions[0]) == len(versions):
        return entry(versions[0]), f"{name}: cached v{versions[0]} at {directory}"
    if shutil.which("apt-get") is None or shutil.which("dpkg-deb") is None:
        reason = f"no apt-get / dpkg-deb here ({program.purpose})"
        return {"unavailable": reason}, f"{name}: unavailable: {reason}"
    with tempfile.TemporaryDirectory(prefix=f"graylb-{name}-deb-") as tmp:
        unpacked, got = debian_package(program.package, Path(tmp))
        if unpacked is None:
            return {"unavailable": got}, f"{name}: unavailable: {got}"
        missing = [path for path in program.binaries.values() if not (unpacked / path).is_file()]
        if missing:
            reason = f"{got} holds no {', '.join(missing)}"
            return {"failed": reason}, f"{name}: FAILED: {reason}"
        directory.mkdir(parents=True, exist_ok=True)
        for binary, path in program.binaries.items():
            partial = directory / (binary + ".partial")
            shutil.copy2(unpacked / path, partial)
            os.replace(partial, directory / binary)  # atomic: a half-copied binary never looks cached
    first = next(iter(program.binaries))
    version, out = _probe(directory / first, program)
    if not version:
        tail = [line for line in out.splitlines() if line.strip()]
        reason = f"the unpacked {first} does not report its version" + (f": {_clean(tail[-1])}" if tail else "")
        return {"failed": reason}, f"{name}: FAILED: {reason}"
    return entry(version), f"{name}: unpacked v{version} from {got} -> {directory}"


def debian_prometheus(directory: Path) -> tuple[dict[str, str], str]:
    """Debian's ``prometheus`` package (with promtool), unpacked into ``directory``: no root, no
    service. Recorded as unavailable, with why, where apt cannot get it."""
    return debian_program(DEBIAN_PROMETHEUS, directory)


def debian_nginx(directory: Path) -> tuple[dict[str, str], str]:
    """Debian's ``nginx`` package (its binary, ``usr/sbin/nginx``), unpacked into ``directory``:
    no root, no service, no /etc/nginx (benchmarks/peer_gateway.py writes its own config).
    Recorded as unavailable, with why, where apt cannot get it."""
    return debian_program(DEBIAN_NGINX, directory)


RNACOS_VERSION = "0.8.8"


def build_rnacos(directory: Path, verbose: bool) -> tuple[dict[str, str], str]:
    """rnacos, the Nacos-compatible server written in Rust, from crates.io with the local cargo
    (``cargo install --locked``: the crate's own Cargo.lock), into ``directory``."""
    binary = directory / "rnacos"

    def reported(path: Path) -> str | None:
        try:
            out = subprocess.run([str(path), "--version"], capture_output=True, text=True, timeout=30).stdout
        except (OSError, subprocess.SubprocessError):
            return None
        m = re.search(r"rnacos (\S+)", out)
        return m.group(1) if m else None

    entry = {"version": RNACOS_VERSION, "binary": str(binary), "server": "rnacos"}
    if reported(binary) == RNACOS_VERSION:
        return entry, f"nacos: cached rnacos v{RNACOS_VERSION} at {directory}"
    if shutil.which("cargo") is None:
        reason = "no cargo on PATH (needed to build rnacos, the Nacos-compatible server, from crates.io)"
        return {"failed": reason}, f"nacos: FAILED: {reason}"
    started = time.monotonic()
    log: list[str] = []
    with tempfile.TemporaryDirectory(prefix="graylb-rnacos-build-") as tmp:
        root = Path(tmp) / "root"
        cmd = ["cargo", "install", "rnacos", "--version", RNACOS_VERSION, "--locked", "--root", str(root)]
        try:
            proc = _run(cmd, Path(tmp), dict(os.environ), log, 5400)
        except (OSError, subprocess.SubprocessError) as exc:
            reason = _clean(f"{type(exc).__name__}: {exc}")
            return {"failed": reason}, f"nacos: FAILED to build rnacos v{RNACOS_VERSION}: {reason}"
        built = root / "bin" / "rnacos"
        if proc.returncode != 0 or reported(built) != RNACOS_VERSION:
            if verbose:
                print("\n".join(log), file=sys.stderr)
            tail = [line for line in "".join(log[-1:]).splitlines() if line.strip() and "error" in line.lower()]
            reason = _clean(tail[-1] if tail else f"cargo install exited {proc.returncode}")
            return {"failed": reason}, f"nacos: FAILED to build rnacos v{RNACOS_VERSION}: {reason}"
        directory.mkdir(parents=True, exist_ok=True)
        partial = directory / "rnacos.partial"
        shutil.copy2(built, partial)
        os.replace(partial, binary)
    took = time.monotonic() - started
    entry = _built(entry, took)
    return entry, f"nacos: built rnacos v{RNACOS_VERSION} from crates.io in {took:.0f}s -> {directory}"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--verbose", "-v", action="store_true", help="print the build log when a step fails")
    parser.add_argument("--skip-nacos", action="store_true", help="do not build rnacos (keep what the manifest says)")
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

    failed = False
    for program in (CONSUL, PROMETHEUS, JAEGER):
        directory = cache / f"{program.key}-{program.version}"
        if directory.exists() and not directory.is_dir():
            directory.unlink()  # a stray file where the version directory belongs
        entry, line = build_go_program(program, directory, args.verbose)
        manifest[program.key] = entry = _carry_build_record(manifest.get(program.key), entry)
        failed = failed or "failed" in entry
        print(line, flush=True)
        _save(manifest_path, manifest)  # what is built is recorded even if a later build is interrupted

    for key, fetch, directory in (
        ("prometheus-debian", debian_prometheus, cache / "prometheus-debian"),
        ("nginx", debian_nginx, cache / "nginx-debian"),
    ):
        manifest[key], line = fetch(directory)
        failed = failed or "failed" in manifest[key]
        print(line, flush=True)
        _save(manifest_path, manifest)

    if not args.skip_nacos or "nacos" not in manifest:
        entry, nacos_line = build_rnacos(cache / f"rnacos-{RNACOS_VERSION}", args.verbose)
        manifest["nacos"] = _carry_build_record(manifest.get("nacos"), entry)
        failed = failed or "failed" in manifest["nacos"]
    else:
        nacos_line = f"nacos: {json.dumps(manifest['nacos'])} (attempt skipped)"
    print(nacos_line, flush=True)

    _save(manifest_path, manifest)
    print(f"manifest: {manifest_path}", flush=True)
    return 1 if failed else 0


def _save(path: Path, manifest: dict[str, object]) -> None:
    tmp = path.with_name("manifest.json.partial")
    tmp.write_text(json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    os.replace(tmp, path)


if __name__ == "__main__":
    raise SystemExit(main())
