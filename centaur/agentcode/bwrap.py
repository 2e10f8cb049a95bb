"""The sandbox of an edited run: bubblewrap (`bwrap`, https://github.com/containers/bubblewrap).

Why bubblewrap: it is the maintained, unprivileged sandbox that Flatpak is built on; it needs no daemon,
no root and no setuid bit where user namespaces are enabled (Debian/Ubuntu package `bubblewrap`), it
starts in milliseconds, and it composes the exact file-system view we want from bind mounts instead of
hiding things from a full view. (`unshare` alone gives namespaces but no file-system view; firejail is
setuid and policy-file driven; nsjail and gVisor are heavier to install on a cluster node.)

Every edited run gets: new user, PID, mount, IPC, UTS, cgroup and network namespaces; no capabilities;
a new session (no terminal injection); death with its parent; an empty environment plus an allowlist;
a root file system that holds only the system directories (read-only), the Python installation and the
centaur package (read-only), the task's files (read-only), the paths the caller names read-only, and one
writable folder (the trial's output). Everything else - the study storage, the run directory with the
other trials, HOME, the evaluation data, other processes' /proc entries - is not there.
"""

from __future__ import annotations

import functools
import glob
import os
import shutil
import subprocess
import sys
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

PACKAGE_ROOT = Path(__file__).resolve().parents[2]  # holds the `centaur` package (an editable install)
# System directories a Python training run needs, read-only; merged-/usr symlinks are recreated as links.
_SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/opt")
_ETC_FILES = (
    "ld.so.cache", "ld.so.conf", "ld.so.conf.d", "localtime", "timezone", "passwd", "group", "nsswitch.conf",
    "hosts", "ssl", "ca-certificates", "ca-certificates.conf", "alternatives", "os-release", "mime.types",
    "python3", "fonts", "matplotlibrc",
)  # fmt: skip
_GPU_DEVICES = ("/dev/nvidia*", "/dev/dri", "/dev/kfd")  # NVIDIA, DRM render nodes, ROCm


class SandboxUnavailable(RuntimeError):
    """bubblewrap is missing or cannot create its namespaces here."""


@dataclass
class View:
    """The file-system view of one sandboxed run (host paths; each appears at the same path inside)."""

    read_only: list[Path] = field(default_factory=list)
    writable: list[Path] = field(default_factory=list)
    hidden: list[Path] = field(default_factory=list)  # masked where they lie inside a read-only path
    chdir: Path | str | None = None
    mapped: list[tuple[Path, str, bool]] = field(default_factory=list)  # (host path, sandbox path, writable)
    sealed: bool = False  # nothing writable at all: /tmp and /dev read-only too (the model process)
    as_pid_1: bool = False  # the command is PID 1 of its namespace: no bwrap init holding its pipes


@functools.cache
def bwrap_path() -> str | None:
    return shutil.which("bwrap")


@functools.cache
def sandbox_problem() -> str | None:
    """None when the sandbox works here, else why not (shown to the user with the refusal)."""
    exe = bwrap_path()
    if exe is None:
        return ("bubblewrap (`bwrap`) is not installed; install it (Debian/Ubuntu: apt-get install bubblewrap; "
                "RHEL/Fedora: dnf install bubblewrap; or run scripts/setup as root)")
    argv = build_argv(["/bin/true" if os.path.exists("/bin/true") else shutil.which("true") or "true"],
                      View(), env={}, probe=True)
    try:
        probe = subprocess.run(argv, capture_output=True, timeout=20)
    except (OSError, subprocess.SubprocessError) as e:
        return f"bubblewrap failed to start: {e}"
    if probe.returncode != 0:
        why = probe.stderr.decode(errors="replace").strip()[:300]
        return (f"bubblewrap cannot create its namespaces here ({why}); user namespaces may be disabled "
                "(sysctl kernel.unprivileged_userns_clone=1 or user.max_user_namespaces > 0), or the container "
                "forbids them (docker: --security-opt seccomp=unconfined, or run on the host)")
    return None


def python_paths(python: str = sys.executable) -> list[Path]:
    """What the interpreter needs read-only: its installation, the virtual environment, the package."""
    paths = [Path(sys.base_prefix), Path(sys.prefix), PACKAGE_ROOT / "centaur"]
    exe = Path(python)
    paths.append(exe.parent)
    try:
        paths.append(exe.resolve().parent.parent)
    except OSError:
        pass
    for entry in sys.path:  # site-packages outside the prefixes (user site, conda, ...)
        p = Path(entry) if entry else None
        if p and ("site-packages" in p.parts or "dist-packages" in p.parts) and p.is_dir():
            paths.append(p)
    return _dedupe(paths)


def build_argv(
    command: Sequence[str],
    view: View,
    *,
    env: Mapping[str, str],
    gpu: bool = True,
    probe: bool = False,
) -> list[str]:
    """The bwrap command line that runs `command` in `view` with exactly `env`."""
    exe = bwrap_path() or "bwrap"
    argv = [exe, "--unshare-user", "--unshare-pid", "--unshare-ipc", "--unshare-net", "--unshare-uts",
            "--unshare-cgroup-try", "--hostname", "sandbox", "--die-with-parent", "--new-session",
            "--cap-drop", "ALL", "--clearenv"]
    if view.as_pid_1:
        argv.append("--as-pid-1")
    for d in _SYSTEM_DIRS:
        if os.path.islink(d):
            argv += ["--symlink", os.readlink(d), d]
        elif os.path.isdir(d):
            argv += ["--ro-bind", d, d]
    for name in _ETC_FILES:
        argv += ["--ro-bind-try", f"/etc/{name}", f"/etc/{name}"]
    argv += ["--proc", "/proc", "--dev", "/dev", "--tmpfs", "/tmp", "--tmpfs", "/run"]
    if not probe:
        argv += ["--ro-bind-try", "/sys", "/sys"]  # CPU topology for the BLAS libraries, PCI for CUDA
        if gpu:
            for pattern in _GPU_DEVICES:
                for dev in sorted(glob.glob(pattern)):
                    argv += ["--dev-bind-try", dev, dev]
        read_only = _dedupe([*python_paths(), *view.read_only])
        for p in read_only:
            argv += ["--ro-bind", str(p), str(p)]
        system = _dedupe(Path(d) for d in _SYSTEM_DIRS if os.path.isdir(d) and not os.path.islink(d))
        # Others are not in the view anyway.
        masks = [h for h in _dedupe(view.hidden) if _under(h, [*system, *read_only])]
        for hidden in masks:
            if hidden.is_dir():
                argv += ["--tmpfs", str(hidden)]
            else:
                argv += ["--ro-bind", "/dev/null", str(hidden)]
        for p in read_only:  # what the caller asked for inside a masked folder (the trial's script)
            if any(m in p.parents for m in masks):
                argv += ["--ro-bind", str(p), str(p)]
        for p in _dedupe(view.writable):
            argv += ["--bind", str(p), str(p)]
        for src, dest, writable in view.mapped:  # at neutral paths: the run directory's path is not shown
            argv += ["--bind" if writable else "--ro-bind", str(Path(src).resolve()), dest]
        argv += ["--remount-ro", "/"]  # the folders bwrap made for the mount points: not a scratch space
        if view.sealed:  # no place to keep anything between two processes of the sandbox
            argv += ["--remount-ro", "/tmp", "--remount-ro", "/dev", "--remount-ro", "/run"]
        if view.chdir is not None:
            argv += ["--chdir", str(view.chdir)]
    for key, value in env.items():
        argv += ["--setenv", key, value]
    return [*argv, "--", *command]


def _under(path: Path, roots: Iterable[Path]) -> bool:
    return any(path == r or r in path.parents for r in roots)


def _dedupe(paths: Iterable[Path]) -> list[Path]:
    """Absolute, existing, resolved paths, each once, parents before children (bind order matters)."""
    out: list[Path] = []
    for p in paths:
        try:
            r = Path(os.path.abspath(p)).resolve()
        except OSError:
            continue
        if r.exists() and r not in out:
            out.append(r)
    return sorted(out, key=lambda p: len(p.parts))
