"""Running untrusted Python programs against trusted test code.

:func:`run_tests` is re-exported by :mod:`tabom.scoring` (its callers use it
from there). Standard library only; the child side is
:mod:`tabom._sandbox_child`, run by path as ``python -I -B``.

Design
------
Per sample, three processes:

- the harness H (trusted) runs the *tests*, never program code, and writes
  the verdict on a pipe that only it holds;
- the program process P runs the *program* and then serves H's requests:
  H sees every name the program defines as a proxy that forwards calls,
  attribute access, iteration, indexing, ``len``/``bool``/``in`` to P. What
  P sends back is unpickled by H with a restricted unpickler that builds
  plain data only (numbers, strings, bytes, containers, ``Counter`` ...) or
  further proxies, whose equality is identity. So the assertions of the tests
  run in H with H's own builtins: patching builtins, forging a verdict line
  or returning an object with a lying ``__eq__`` cannot make a test pass;
- an init process I between them (pid 1 of P's PID namespace): its death
  kills every process the program started.

H is forked by a fork server Z (one per evaluator process, started on first
use, everything imported once; it exits when the evaluator does). Without
pidfds (Linux < 5.3) or with ``TABOM_SANDBOX_FORKSERVER=0``, every sample
starts H as a new interpreter instead (same isolation, slower).

OS layers (Linux, evaluator running as root; the active ones are returned
by :func:`isolation_layers`; missing ones are logged once):

- ``uid``: P runs as a fresh unprivileged uid ``u`` (random in
  ``_UID_RANGE``), H and I as ``u + 1``, no groups, no capabilities,
  ``PR_SET_NO_NEW_PRIVS``, not dumpable: P cannot signal or ptrace the
  evaluator or the harness, and ``RLIMIT_NPROC`` (64 processes+threads)
  applies to it;
- ``fs``: a private mount namespace in which every mount is read-only except
  the sample's working folder (folders above the Python installation that
  these uids may not traverse, such as ``/root``, are covered by an empty
  tmpfs into which only the Python folders are bound);
- ``net``: a new network namespace (only a loopback that is down);
- ``pid``: a new PID namespace with its own ``/proc``: killing I kills all;
- ``ipc``: new IPC and UTS namespaces.

Always: ``RLIMIT_AS``/``RLIMIT_DATA`` (``memory_mb``), ``RLIMIT_FSIZE``
(``fsize_mb``), ``RLIMIT_CORE`` 0, ``RLIMIT_NOFILE`` 256, ``RLIMIT_CPU``
(timeout + 2 s), a new session, ``PR_SET_PDEATHSIG`` down the chain, the
parent's wall-clock timeout after which it kills I and H (through pidfds)
and H's process group, and the Python-level reliability guard in P
(defence in depth). Without root (or where namespaces are refused) the
verdict separation, rlimits, process-group kill and guard remain, but the
file system, network and other processes of the user are not protected.

``TABOM_SANDBOX_ISOLATION``: ``auto`` (default: every layer available),
``require`` (a sample fails when a layer is missing), ``off`` (no uid, no
namespaces; for tests of the fallback).
"""

from __future__ import annotations

import logging
import marshal
import os
import secrets
import select
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

logger = logging.getLogger(__name__)

__all__ = ["run_tests", "isolation_mode", "isolation_layers", "shutdown_fork_server", "CHILD"]

CHILD = str(Path(__file__).resolve().with_name("_sandbox_child.py"))
_OUTPUT_TAIL = 64 * 1024
_GRACE_S = 5.0
# Unprivileged uids for program processes: one fresh uid per running sample
# (random, so that concurrent evaluators on one machine do not collide).
_UID_RANGE = (1_700_000_000, 1_700_000_000 + (1 << 24))
_UIDS_IN_USE: set[int] = set()
_UID_LOCK = threading.Lock()
_WARNED: set[str] = set()


def isolation_mode() -> str:
    """``TABOM_SANDBOX_ISOLATION``: ``auto`` (default), ``require`` or ``off``."""
    mode = os.environ.get("TABOM_SANDBOX_ISOLATION", "auto").strip().lower() or "auto"
    if mode not in ("auto", "require", "off"):
        raise ValueError(f"TABOM_SANDBOX_ISOLATION must be auto, require or off, not {mode!r}")
    return mode


def _acquire_uid() -> int:
    """An even uid ``u``: the program runs as ``u``, the harness as ``u + 1``."""
    with _UID_LOCK:
        while True:
            uid = _UID_RANGE[0] + 2 * secrets.randbelow((_UID_RANGE[1] - _UID_RANGE[0]) // 2)
            if uid not in _UIDS_IN_USE:
                _UIDS_IN_USE.add(uid)
                return uid


def _release_uid(uid: int | None) -> None:
    if uid is not None:
        with _UID_LOCK:
            _UIDS_IN_USE.discard(uid)


def _signal_name(num: int) -> str:
    try:
        return signal.Signals(num).name
    except ValueError:
        return f"signal {num}"


def _parent_pid_of(pid: int) -> int | None:
    try:
        with open(f"/proc/{pid}/stat", "rb") as fh:
            stat = fh.read()
        return int(stat[stat.rindex(b")") + 2:].split()[1])
    except (OSError, ValueError, IndexError):
        return None


class _Proc:
    """A process of the sandbox held through a pidfd (so that signalling it
    never hits a recycled pid); ``fd`` is None where pidfds are unavailable."""

    def __init__(self, pid: int, fd: int | None):
        self.pid, self.fd = pid, fd

    @classmethod
    def open(cls, pid: int, parent_pid: int) -> _Proc:
        """Pin ``pid``, a child of ``parent_pid`` (that has not reaped it yet)."""
        try:
            fd = os.pidfd_open(pid)
        except (AttributeError, OSError):
            return cls(pid, None)
        # The parent reaps it only after writing the verdict, so it is still
        # ours unless the parent died meanwhile: check, now that the pidfd pins it.
        if _parent_pid_of(pid) != parent_pid:
            os.close(fd)
            return cls(pid, None)
        return cls(pid, fd)

    def _exited(self, timeout: float) -> bool:
        poller = select.poll()   # not select(): descriptors may be above FD_SETSIZE
        poller.register(self.fd, select.POLLIN)
        return bool(poller.poll(int(timeout * 1000)))

    def alive(self) -> bool:
        return self.fd is not None and not self._exited(0)

    def kill(self) -> None:
        if self.fd is not None:
            try:
                signal.pidfd_send_signal(self.fd, signal.SIGKILL)
            except OSError:
                pass

    def wait_gone(self, timeout: float) -> bool:
        return self.fd is None or self._exited(timeout)

    def close(self) -> None:
        if self.fd is not None:
            os.close(self.fd)
            self.fd = None


def _base_env(work: str) -> dict:
    return {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "HOME": work, "TMPDIR": work,
            "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8", "OMP_NUM_THREADS": "1",
            "OPENBLAS_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "NUMEXPR_NUM_THREADS": "1",
            "TABOM_EVAL_NO_HOOK": "1", "SETUPTOOLS_USE_DISTUTILS": "stdlib"}


class _ForkServer:
    """Client of the fork server Z (``_sandbox_child.py --server``): one per
    evaluator process, started on first use, restarted if it dies. Saves the
    interpreter start-up and imports of every sample's harness."""

    def __init__(self):
        self.lock = threading.Lock()
        self.proc: subprocess.Popen | None = None
        self.sock = None
        self.broken = False

    def _stop(self) -> None:
        if self.sock is not None:
            self.sock.close()
            self.sock = None
        if self.proc is not None:
            try:
                self.proc.kill()
                self.proc.wait(timeout=5)
            except (OSError, subprocess.TimeoutExpired):
                pass
            self.proc = None

    def _start(self) -> None:
        import socket

        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            self.proc = subprocess.Popen(
                [sys.executable, "-I", "-B", CHILD, "--server", str(theirs.fileno())],
                cwd="/", env=_base_env("/"), stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                stderr=subprocess.DEVNULL, start_new_session=True, pass_fds=(theirs.fileno(),))
        finally:
            theirs.close()
        ours.settimeout(60)
        self.sock = ours

    def spawn(self, job_path: str, verdict_fd: int, out_fd: int) -> _Proc | None:
        """Fork a harness for ``job_path``; None when the fork server is unusable."""
        import socket

        with self.lock:
            if self.broken:
                return None
            for _ in range(2):
                try:
                    if self.proc is None or self.proc.poll() is not None:
                        self._stop()
                        self._start()
                    socket.send_fds(self.sock, [os.fsencode(job_path)], [verdict_fd, out_fd])
                    msg, fds, _, _ = socket.recv_fds(self.sock, 4096, 1)
                    if not msg:
                        raise ConnectionError("the fork server exited")
                except OSError as e:
                    logger.debug("code sandbox: fork server failed (%s); restarting it", e)
                    self._stop()
                    continue
                if msg.startswith(b"P ") and len(fds) == 1:
                    return _Proc(int(msg[2:]), fds[0])
                for fd in fds:
                    os.close(fd)
                self.broken = True
                logger.warning("code sandbox: the fork server refused a sample (%r); starting each "
                               "sample's harness as a new interpreter (slower)", msg[:200])
                return None
            self.broken = True
            logger.warning("code sandbox: the fork server does not work; starting each sample's "
                           "harness as a new interpreter (slower)")
            return None


_FORK_SERVER = _ForkServer()


def _forget_fork_server_in_child() -> None:
    # a forked evaluator must neither share the parent's fork server nor
    # inherit a lock that another thread held at the fork
    _FORK_SERVER.lock = threading.Lock()
    if _FORK_SERVER.sock is not None:
        try:
            _FORK_SERVER.sock.close()    # our copy only: Z still serves the parent
        except OSError:
            pass
    _FORK_SERVER.sock = _FORK_SERVER.proc = None
    _FORK_SERVER.broken = False


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_fork_server_in_child)


def _use_fork_server() -> bool:
    return (os.environ.get("TABOM_SANDBOX_FORKSERVER", "1").strip() not in ("0", "false", "no")
            and sys.platform.startswith("linux") and hasattr(os, "pidfd_open")
            and hasattr(signal, "pidfd_send_signal"))


def _read_verdict(harness_pid: int, fd: int, timeout: float):
    """Read H's lines until the verdict, EOF or the deadline; returns
    ``(verdict, init, layers, timed_out)``."""
    deadline = time.monotonic() + timeout
    poller = select.poll()
    poller.register(fd, select.POLLIN)
    buf, verdict, init, layers = b"", None, None, None
    while verdict is None:
        left = deadline - time.monotonic()
        if left <= 0:
            return verdict, init, layers, True
        if not poller.poll(int(left * 1000) + 1):
            continue
        chunk = os.read(fd, 65536)
        if not chunk:
            break
        buf += chunk
        while b"\n" in buf and verdict is None:
            line, buf = buf.split(b"\n", 1)
            text = line.decode("utf-8", "replace")
            if text.startswith("I ") and init is None:
                try:
                    init = _Proc.open(int(text[2:]), harness_pid)
                except ValueError:
                    pass
            elif text.startswith("L "):
                layers = text[2:]
            elif text.startswith("V "):
                verdict = text[2:]
    return verdict, init, layers, False


def _note_layers(layers: str | None) -> None:
    if not layers or ";" not in layers:
        return
    key = layers.split(";", 1)[1].strip()
    if key not in _WARNED:
        _WARNED.add(key)
        logger.warning("code sandbox: some isolation layers are not available (%s); active: %s",
                       key, layers.split(";", 1)[0].strip() or "none")


_LAYERS: dict[str, frozenset] = {}


def isolation_layers() -> frozenset:
    """The OS isolation layers a sample gets on this machine with the current
    ``TABOM_SANDBOX_ISOLATION`` (``uid``, ``fs``, ``net``, ``pid``, ``ipc``),
    found by running one trivial sample (cached)."""
    mode = isolation_mode()
    if mode not in _LAYERS:
        result, layers = _run("", "", 30.0, 256, 1)
        if layers is None:
            raise RuntimeError(f"the code sandbox does not start: {result['result']}")
        _LAYERS[mode] = frozenset(x for x in layers.split(";", 1)[0].strip().split(",") if x)
    return _LAYERS[mode]


def shutdown_fork_server() -> None:
    """Stop this process's fork server (it also stops by itself when the
    evaluator exits); the next sample starts a new one."""
    with _FORK_SERVER.lock:
        _FORK_SERVER._stop()
        _FORK_SERVER.broken = False


def run_tests(program: str, test_code: str, timeout: float = 10.0, memory_mb: int = 1024,
              fsize_mb: int = 64) -> dict:
    """Run ``program`` then ``test_code`` in the sandbox (see the module
    docstring): the program in an isolated, unprivileged process, the tests
    in a trusted harness that reaches the program's names through proxies.

    The program's ``__name__`` is ``"__tabom_sandbox__"`` (``if __name__ ==
    "__main__":`` demos do not run), its working directory a fresh empty
    folder (also ``HOME`` and ``TMPDIR``), stdin empty. A name the tests use
    but do not define is taken from the program; builtin names always mean
    the real builtins, except when the tests take no other name from the
    program (MBPP 126's ``def sum(a, b)``).

    ``timeout`` (seconds, wall clock, from the start of the child) ends the
    run; every process of the sample is killed on every exit path and the
    temporary folder removed. Never raises for anything the program does.

    Returns ``{"passed": bool, "result": str}``; ``result`` is ``"passed"``,
    ``"timed out after T s"`` or ``"failed: <why>"``.
    """
    return _run(program, test_code, timeout, memory_mb, fsize_mb)[0]


def _run(program: str, test_code: str, timeout: float, memory_mb: int, fsize_mb: int):
    """:func:`run_tests` and the ``L`` line of the harness (None if none came)."""
    mode = isolation_mode()
    layers = None
    base = tempfile.mkdtemp(prefix="tabom-exec-")
    uid = None
    r_fd = w_fd = None
    try:
        work = os.path.join(base, "work")
        os.mkdir(work, 0o700)
        if mode != "off" and sys.platform.startswith("linux") and os.geteuid() == 0:
            uid = _acquire_uid()
            os.chmod(base, 0o711)
            os.chown(work, uid, uid + 1)   # the program's; the harness (group) may read it
            os.chmod(work, 0o770)
        job_path = os.path.join(base, "job.bin")
        fd = os.open(job_path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as fh:
            marshal.dump({"program": program, "tests": test_code, "work": work, "uid": uid,
                          "harness_uid": None if uid is None else uid + 1,
                          "isolation": mode, "timeout": float(timeout), "memory_mb": int(memory_mb),
                          "fsize_mb": int(fsize_mb), "env": _base_env(work)}, fh)
        r_fd, w_fd = os.pipe()
        out_path = os.path.join(base, "output.txt")
        with open(out_path, "wb") as out:
            proc, harness = None, None
            if _use_fork_server():
                harness = _FORK_SERVER.spawn(job_path, w_fd, out.fileno())
            if harness is None:
                try:
                    proc = subprocess.Popen(
                        [sys.executable, "-I", "-B", CHILD, job_path, str(w_fd)], cwd=base,
                        env=_base_env(work), stdin=subprocess.DEVNULL, stdout=out,
                        stderr=subprocess.STDOUT, start_new_session=True, close_fds=True,
                        pass_fds=(w_fd,))
                except OSError as e:
                    return {"passed": False, "result": f"failed: could not start the sandbox: {e}"}, None
                harness = _Proc(proc.pid, None)
            os.close(w_fd)
            w_fd = None
            init = None
            try:
                verdict, init, layers, timed_out = _read_verdict(harness.pid, r_fd, timeout)
                if verdict is not None:   # H kills I, waits for it, exits
                    if proc is not None:
                        try:
                            proc.wait(timeout=_GRACE_S)
                        except subprocess.TimeoutExpired:
                            pass
                    else:
                        harness.wait_gone(_GRACE_S)
            finally:
                if init is not None:
                    init.kill()
                if proc is not None:     # not reaped yet: its group id is still ours
                    try:
                        os.killpg(proc.pid, signal.SIGKILL)
                    except (ProcessLookupError, PermissionError):
                        pass
                    proc.wait()
                else:
                    if harness.alive():
                        try:
                            os.killpg(harness.pid, signal.SIGKILL)
                        except (ProcessLookupError, PermissionError):
                            pass
                    harness.kill()
                    harness.wait_gone(_GRACE_S)
                    harness.close()
                if init is not None:
                    init.wait_gone(_GRACE_S)
                    init.close()
        _note_layers(layers)
        if timed_out:
            return {"passed": False, "result": f"timed out after {timeout:g} s"}, layers
        if verdict is not None:
            status, _, reason = verdict.partition(" ")
            return {"passed": status == "PASSED", "result": reason.strip() or status.lower()}, layers
        with open(out_path, "rb") as fh:
            fh.seek(max(0, os.path.getsize(out_path) - _OUTPUT_TAIL))
            tail = fh.read().decode("utf-8", "replace")
        rc = proc.returncode if proc is not None else None
        if proc is None:
            why = "the sandbox ended without a verdict"
        elif rc is not None and rc < 0:
            why = f"the sandbox was killed by {_signal_name(-rc)}"
        else:
            why = f"the sandbox exited with code {rc} without a verdict"
        last = [ln for ln in tail.strip().split("\n") if ln.strip()][-1:]
        return {"passed": False, "result": f"failed: {why}" + (f" ({last[0][:300]})" if last else "")}, layers
    finally:
        for fd in (r_fd, w_fd):
            if fd is not None:
                os.close(fd)
        _release_uid(uid)
        shutil.rmtree(base, ignore_errors=True)
