"""Child side of the code-execution sandbox (the parent side is :mod:`tabom.sandbox`).

Standard library only, and nothing of ``tabom`` is imported. The parent runs
this file by path (so it works whether or not ``tabom`` is importable in
isolated mode) as ``python -I -B <this file> --server FD``, the fork server
that forks one harness per sample (see :func:`_fork_server`), or, where that
is not available, as ``python -I -B <this file> JOB VERDICT_FD``, one harness.

Processes (see :mod:`tabom.sandbox` for the guarantees)::

    parent (evaluator)  [- fork server Z: forks one H per sample]
      └─ harness H: run_harness(); trusted, runs the TESTS, never runs
         program code; writes the verdict on VERDICT_FD (a pipe only H holds);
         creates the namespaces, then drops to the unprivileged uid u+1
           └─ init I: forked by H; pid 1 of a new PID namespace when available;
              trusted, only waits (as u+1); its death kills the whole namespace
                └─ program P: forked by I; becomes the unprivileged uid u, limits,
                   guard; runs the PROGRAM, then serves calls from H

H executes the test code with a namespace in which every name the program
defines resolves to a proxy (:class:`RemoteRef`) that forwards calls,
attribute access and a few protocols to P over two pipes. P's replies are
unpickled by H with a restricted unpickler that builds plain data only
(numbers, strings, bytes, containers of them, ``Counter``/``OrderedDict``/
``defaultdict``/``deque``/``Decimal``/``Fraction``) or further proxies; so
every comparison the tests make runs in H with H's own, untouched builtins.

Lines written to VERDICT_FD (read by the parent)::

    I <pid>                 host pid of the init process I
    L <layers> [; <note>]   isolation layers in force
    V PASSED passed | V FAILED <reason>
"""

from __future__ import annotations

import builtins
import io
import marshal
import os
import select
import sys
import types

try:  # the C pickler without pickle.py, which would import re (a few ms per sample)
    import _pickle as pickle
except ImportError:  # pragma: no cover - not CPython
    import pickle

# ---------------------------------------------------------------- constants
CLONE_NEWNS, CLONE_NEWUTS, CLONE_NEWIPC = 0x00020000, 0x04000000, 0x08000000
CLONE_NEWPID, CLONE_NEWNET = 0x20000000, 0x40000000
MS_RDONLY, MS_NOSUID, MS_NODEV, MS_NOEXEC = 1, 2, 4, 8
MS_REMOUNT, MS_BIND, MS_REC, MS_PRIVATE = 32, 4096, 16384, 1 << 18
PR_SET_PDEATHSIG, PR_SET_DUMPABLE, PR_SET_NO_NEW_PRIVS = 1, 4, 38
SYS_MOUNT_SETATTR = 442  # same number on every architecture (Linux >= 5.12)
AT_FDCWD, AT_RECURSIVE = -100, 0x8000
MOUNT_ATTR_RDONLY, MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV = 1, 2, 4
SIGKILL = 9
NPROC_LIMIT = 64          # processes + threads of the sandbox uid
NOFILE_LIMIT = 256
MAX_FRAME = 1 << 30       # largest message the harness accepts from the program
PROGRAM_MODULE = "__tabom_sandbox__"   # __name__ of the program (and of the tests)

_libc = None


def _c():
    """libc through ctypes (imported lazily: only where it is needed)."""
    global _libc
    if _libc is None:
        import ctypes

        _libc = ctypes.CDLL(None, use_errno=True)
        _libc.syscall.restype = ctypes.c_long
    return _libc


def _check(ret: int, what: str) -> None:
    if ret != 0:
        import ctypes

        err = ctypes.get_errno()
        raise OSError(err, f"{what}: {os.strerror(err)}")


def _prctl(option: int, arg: int) -> None:
    try:
        prctl = _c().prctl
    except AttributeError:   # not Linux
        raise OSError("prctl is not available") from None
    _check(prctl(option, arg, 0, 0, 0), "prctl")


def _mount(src, target, fstype, flags: int, data=None) -> None:
    enc = (lambda s: None if s is None else os.fsencode(s))
    _check(_c().mount(enc(src), enc(target), enc(fstype), flags, enc(data)), f"mount {target}")


# ---------------------------------------------------------------- framing
def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


def _send(fd: int, obj_bytes: bytes) -> None:
    _write_all(fd, len(obj_bytes).to_bytes(8, "big") + obj_bytes)


class ChannelClosed(Exception):
    """The other end of a pipe went away."""


def _read_exact(fd: int, n: int, deadline: float | None = None) -> bytes:
    chunks, got = [], 0
    poller = None
    while got < n:
        if deadline is not None:
            import time

            if poller is None:
                poller = select.poll()
                poller.register(fd, select.POLLIN)
            left = deadline - time.monotonic()
            if left <= 0 or not poller.poll(int(left * 1000) + 1):
                raise TimeoutError("the program did not answer in time")
        chunk = os.read(fd, min(n - got, 1 << 20))
        if not chunk:
            raise ChannelClosed()
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def _recv(fd: int, deadline: float | None = None, limit: int = MAX_FRAME) -> bytes:
    size = int.from_bytes(_read_exact(fd, 8, deadline), "big")
    if size > limit:
        raise ValueError(f"message of {size} bytes exceeds the {limit}-byte limit")
    return _read_exact(fd, size, deadline)


# ---------------------------------------------------------------- the shared sentinel module
# Pickles of both directions name proxies through the module ``__tabom_ref__``:
# ``__tabom_ref__.get(hid)`` (harness -> program: "your object number hid"),
# ``__tabom_ref__.ref(hid, type_name)`` and ``__tabom_ref__.mod(name, hid)``
# (program -> harness: "my object number hid" / "my module ``name``").
_REFMOD = types.ModuleType("__tabom_ref__")


def _sentinel(name: str):
    def fn(*args):
        return _ROLE[name](*args)

    fn.__module__, fn.__name__, fn.__qualname__ = "__tabom_ref__", name, name
    setattr(_REFMOD, name, fn)
    return fn


_ROLE: dict = {}
_GET, _REF, _MOD = _sentinel("get"), _sentinel("ref"), _sentinel("mod")


# =====================================================================
# Program process P
# =====================================================================
_PLAIN_EXACT = frozenset({type(None), bool, int, float, complex, str, bytes, bytearray, list, tuple,
                          dict, set, frozenset, range, slice})
_SCALAR_BASES = (int, float, complex, str, bytes)
_CONTAINER_BASES = (tuple, list, dict, frozenset, set)
_HANDLES: dict[int, object] = {}
_HIDS: dict[int, int] = {}


def _handle(obj) -> int:
    hid = _HIDS.get(id(obj))
    if hid is None or _HANDLES.get(hid) is not obj:
        hid = len(_HANDLES) + 1
        _HANDLES[hid] = obj
        _HIDS[id(obj)] = hid
    return hid


def _type_values() -> set:
    import collections

    vals = set(_PLAIN_EXACT - {type(None)})
    vals |= {collections.Counter, collections.OrderedDict, collections.defaultdict, collections.deque}
    for modname, name in (("decimal", "Decimal"), ("fractions", "Fraction")):
        mod = sys.modules.get(modname)
        if mod is not None:
            vals.add(getattr(mod, name))
    return vals


class _ResultPickler(pickle.Pickler):
    """Pickles a program value as plain data; any other object becomes a handle.

    This runs in the untrusted process: it is a convenience (subclasses of
    plain types and numpy scalars become plain values), not a check; the
    harness checks what arrives."""

    def __init__(self, file, allowed):
        super().__init__(file, protocol=5)
        self.allowed = allowed

    def reducer_override(self, obj):
        t = type(obj)
        if t in self.allowed or obj is _REF or obj is _MOD or obj is Ellipsis:
            return NotImplemented
        if isinstance(obj, type) and obj in self.allowed:
            return NotImplemented
        if isinstance(obj, types.ModuleType):
            return _MOD, (obj.__name__, _handle(obj))
        for base in _SCALAR_BASES:
            if isinstance(obj, base) and not isinstance(obj, bool):
                return base, (getattr(base, {int: "__int__", float: "__float__", complex: "__complex__",
                                             str: "__str__", bytes: "__bytes__"}[base])(obj),)
        for base in _CONTAINER_BASES:
            if isinstance(obj, base):
                return base, (list(obj.items()) if base is dict else list(obj),)
        if (getattr(t, "__module__", "") == "numpy" and getattr(obj, "shape", None) == ()
                and hasattr(obj, "item")):
            value = obj.item()
            if type(value) in _PLAIN_EXACT:
                return type(value), (value,)
        return _REF, (_handle(obj), getattr(t, "__qualname__", "object")[:200])


def _dumps_result(reply) -> bytes:
    allowed = _type_values()
    buf = io.BytesIO()
    try:
        _ResultPickler(buf, allowed).dump(reply)
    except BaseException:  # noqa: BLE001 - anything unpicklable becomes a handle
        if reply[0] != "ok":
            raise
        buf = io.BytesIO()
        _ResultPickler(buf, allowed).dump(("ok", _Opaque(reply[1])))
    return buf.getvalue()


class _Opaque:
    """Wraps a value that could not be pickled: it travels as a handle."""

    __slots__ = ("value",)

    def __init__(self, value):
        self.value = value

    def __reduce__(self):
        return _REF, (_handle(self.value), type(self.value).__qualname__[:200])


def _exc_text(e: BaseException) -> str:
    try:
        return str(e)[:2000]
    except BaseException:  # noqa: BLE001
        return "<unprintable exception>"


def _program_error_reason(e: BaseException, program: str) -> str:
    import errno

    if isinstance(e, SystemExit):
        return f"the program called exit({e.code!r}) before the tests finished"[:2000]
    name = type(e).__name__
    msg = _exc_text(e)
    where = ""
    if isinstance(e, SyntaxError):
        where = f" (syntax error in the program, line {e.lineno})"
    else:
        where = _where(e.__traceback__, "<program>", program)
    if isinstance(e, OSError) and e.errno == errno.EFBIG:
        where += " (file size limit)"
    return f"{name}{': ' + msg[:500] if msg else ''}{where}"


def _where(tb, filename: str, source: str) -> str:
    found = None
    while tb is not None:
        if tb.tb_frame.f_code.co_filename == filename:
            found = tb.tb_lineno
        tb = tb.tb_next
    if found is None:
        return ""
    lines = source.split("\n")
    text = lines[found - 1].strip() if 0 < found <= len(lines) else ""
    return f" at {filename} line {found}: {text[:300]}"


def _set_limits(job: dict) -> None:
    import resource

    mem = int(job["memory_mb"]) * 1024 * 1024
    cpu = int(job["timeout"]) + 2
    for lim, val in ((resource.RLIMIT_AS, mem), (resource.RLIMIT_DATA, mem),
                     (resource.RLIMIT_FSIZE, int(job["fsize_mb"]) * 1024 * 1024),
                     (resource.RLIMIT_CORE, 0), (resource.RLIMIT_NOFILE, NOFILE_LIMIT),
                     (resource.RLIMIT_NPROC, NPROC_LIMIT), (resource.RLIMIT_CPU, (cpu, cpu + 1))):
        soft, hard = val if isinstance(val, tuple) else (val, val)
        try:
            cur_soft, cur_hard = resource.getrlimit(lim)
            if cur_hard != resource.RLIM_INFINITY:
                soft, hard = min(soft, cur_hard), min(hard, cur_hard)
            resource.setrlimit(lim, (soft, hard))
        except (ValueError, OSError):
            pass


def _close_fds_except(keep) -> None:
    keep = sorted(set(keep))
    lo = 3
    for fd in keep:
        if fd >= lo:
            os.closerange(lo, fd)
            lo = fd + 1
    os.closerange(lo, 1 << 16)


def _init_process(job: dict, layers: set, to_h: int, from_h: int, verdict_fd: int) -> None:
    """Process I: pid 1 of the new PID namespace (when there is one). Forks P
    and waits; exits with P's status. Never runs program code."""
    status = 70
    try:
        os.close(verdict_fd)
        if "pid" in layers:
            os.setsid()
            if "fs" in layers:
                try:
                    _mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC)
                except OSError:
                    pass
        try:
            _prctl(PR_SET_PDEATHSIG, SIGKILL)
        except OSError:
            pass
        pid = os.fork()
        if pid == 0:
            _program_process(job, layers, to_h, from_h)
        os.close(to_h)
        os.close(from_h)
        _close_fds_except(())
        if "uid" in layers:           # like H: so that H may signal it
            _drop_privileges(job["harness_uid"])
        while True:
            try:
                got, st = os.wait()
            except ChildProcessError:
                break
            if got == pid:
                if os.WIFSIGNALED(st):
                    status = 128 + os.WTERMSIG(st)
                else:
                    status = min(os.WEXITSTATUS(st), 127)
                break
    finally:
        os._exit(status)


def _drop_privileges(uid: int) -> None:
    """Become ``uid`` (group ``uid``, no supplementary groups, no
    capabilities, no new privileges), still dying with the parent."""
    os.setgroups([])
    os.setresgid(uid, uid, uid)
    os.setresuid(uid, uid, uid)
    if os.getresuid() != (uid, uid, uid):
        raise OSError(f"could not become uid {uid}")
    _prctl(PR_SET_NO_NEW_PRIVS, 1)
    _prctl(PR_SET_DUMPABLE, 0)
    _prctl(PR_SET_PDEATHSIG, SIGKILL)   # a change of credentials clears it


def _program_process(job: dict, layers: set, to_h: int, from_h: int) -> None:
    """Process P: runs the program, then serves the harness's requests."""
    try:
        _close_fds_except((to_h, from_h))
        _set_limits(job)
        if "uid" in layers:
            _drop_privileges(job["uid"])
        else:
            try:
                _prctl(PR_SET_NO_NEW_PRIVS, 1)
                _prctl(PR_SET_PDEATHSIG, SIGKILL)
            except OSError:
                pass
        os.chdir(job["work"])
    except BaseException as e:  # noqa: BLE001
        _send(to_h, pickle.dumps(("error", f"sandbox setup failed: {e!r}"[:2000])))
        os._exit(71)
    _apply_guard(job["work"])
    sys.argv = ["-c"]
    program = job["program"]
    module = types.ModuleType(PROGRAM_MODULE)
    module.__builtins__ = builtins
    sys.modules[PROGRAM_MODULE] = module
    ns = module.__dict__
    try:
        code = compile(program, "<program>", "exec")
        exec(code, ns)
    except BaseException as e:  # noqa: BLE001
        _send(to_h, pickle.dumps(("error", _program_error_reason(e, program))))
        os._exit(0)
    _ROLE["get"] = _HANDLES.__getitem__
    _send(to_h, pickle.dumps(("ready",)))
    _serve(ns, to_h, from_h)


_OPS = {
    "iter": iter, "next": next, "len": len, "bool": bool, "str": str, "repr": repr,
    "getitem": lambda o, k: o[k], "contains": lambda o, k: k in o,
    "setitem": lambda o, k, v: o.__setitem__(k, v), "delitem": lambda o, k: o.__delitem__(k),
}


def _serve(ns: dict, to_h: int, from_h: int) -> None:
    loads = pickle.loads
    while True:
        try:
            data = _recv(from_h)
        except ChannelClosed:
            os._exit(0)
        try:
            req = loads(data)
            op = req[0]
            if op == "get":
                if req[1] not in ns:
                    _send(to_h, pickle.dumps(("missing",)))
                    continue
                result = ns[req[1]]
            elif op == "names":
                result = [k for k in ns if type(k) is str]
            elif op == "call":
                result = _HANDLES[req[1]](*req[2], **req[3])
            elif op == "getattr":
                result = getattr(_HANDLES[req[1]], req[2])
            elif op == "setattr":
                result = setattr(_HANDLES[req[1]], req[2], req[3])
            elif op == "delattr":
                result = delattr(_HANDLES[req[1]], req[2])
            elif op == "op":
                result = _OPS[req[2]](_HANDLES[req[1]], *req[3])
            else:
                raise ValueError(f"unknown request {op!r}")
            reply = ("ok", result)
        except BaseException as e:  # noqa: BLE001 - reported to the tests as an exception
            reply = ("exc", type(e).__name__[:100], _exc_text(e))
        try:
            out = _dumps_result(reply)
        except BaseException as e:  # noqa: BLE001
            out = pickle.dumps(("exc", type(e).__name__[:100], _exc_text(e)))
        _send(to_h, out)


def _apply_guard(sandbox: str) -> None:
    """The Python-level reliability guard (defence in depth; the OS layers do
    the real work where available): process creation/control, permission
    changes and writes outside the working directory raise PermissionError.
    ``shutil``, ``subprocess`` and ``_posixsubprocess`` are patched when the
    program imports them (importing them up front would cost every sample)."""
    import faulthandler
    import posix

    sandbox = os.path.realpath(sandbox)

    def _inside(path):
        if isinstance(path, int):
            return True
        p = os.path.realpath(os.path.join(sandbox, os.fsdecode(os.fspath(path))))
        return p == sandbox or p.startswith(sandbox + os.sep)

    def _deny(path):
        raise PermissionError(f"sandbox: writing outside the working directory is not allowed: {path!r}")

    real_open, real_os_open = builtins.open, os.open
    write_flags = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND

    def _guarded_open(file, mode="r", *args, **kwargs):
        if isinstance(mode, str) and any(c in mode for c in "wax+") and not _inside(file):
            _deny(file)
        return real_open(file, mode, *args, **kwargs)

    def _guarded_os_open(path, flags, *args, **kwargs):
        if flags & write_flags and not _inside(path):
            _deny(path)
        return real_os_open(path, flags, *args, **kwargs)

    def _guard_path(fn):
        def wrapped(path, *args, **kwargs):
            if not _inside(path):
                _deny(path)
            return fn(path, *args, **kwargs)
        return wrapped

    def _guard_two(fn):
        def wrapped(src, dst, *args, **kwargs):
            if not (_inside(src) and _inside(dst)):
                _deny(dst if _inside(src) else src)
            return fn(src, dst, *args, **kwargs)
        return wrapped

    def _disabled(name):
        def fn(*args, **kwargs):
            raise PermissionError(f"sandbox: {name} is disabled")
        return fn

    def _disable_all(module, prefix, names):
        for name in names:
            if hasattr(module, name):
                setattr(module, name, _disabled(prefix + name))

    faulthandler.disable()
    builtins.open = io.open = _guarded_open
    os.open = posix.open = _guarded_os_open
    for mod in (os, posix):
        for name in ("mkdir", "remove", "unlink", "rmdir"):
            setattr(mod, name, _guard_path(getattr(mod, name)))
        for name in ("rename", "replace"):
            setattr(mod, name, _guard_two(getattr(mod, name)))
        _disable_all(mod, "os.", (
            "fork", "forkpty", "vfork", "system", "popen", "kill", "killpg", "removedirs", "renames",
            "truncate", "ftruncate", "link", "symlink", "chmod", "fchmod", "lchmod", "chown",
            "fchown", "lchown", "lchflags", "chflags", "chroot", "chdir", "fchdir", "setuid",
            "setgid", "seteuid", "setegid", "setreuid", "setregid", "setresuid", "setresgid",
            "setsid", "setpgid", "setpgrp", "execv", "execve", "execl", "execle", "execlp",
            "execlpe", "execvp", "execvpe", "spawnv", "spawnve", "spawnl", "spawnle", "spawnlp",
            "spawnlpe", "spawnvp", "spawnvpe", "posix_spawn", "posix_spawnp", "mkfifo", "mknod",
            "plock", "sched_setaffinity", "nice"))
    os.makedirs = _guard_path(os.makedirs)
    builtins.exit = builtins.quit = _disabled("exit()")
    builtins.help = _disabled("help()")
    for name in ("resource", "psutil", "ipdb", "joblib", "tkinter", "multiprocessing", "pty"):
        sys.modules[name] = None
    sys.stdin = io.StringIO("")
    patches = {
        "shutil": lambda m: _disable_all(m, "shutil.", (
            "rmtree", "move", "chown", "copy", "copy2", "copyfile", "copytree", "copymode",
            "copystat")),
        "subprocess": lambda m: _disable_all(m, "subprocess.", (
            "Popen", "run", "call", "check_call", "check_output", "getoutput", "getstatusoutput")),
        "_posixsubprocess": lambda m: _disable_all(m, "_posixsubprocess.", ("fork_exec",)),
    }
    for name, patch in patches.items():
        if name in sys.modules:
            patch(sys.modules[name])
    sys.meta_path.insert(0, _PatchOnImport(patches))


class _PatchingLoader:
    def __init__(self, loader, patch):
        self.loader, self.patch = loader, patch

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.patch(module)


class _PatchOnImport:
    """Meta path finder that applies a patch right after a module is executed."""

    def __init__(self, patches: dict):
        self.patches = patches

    def find_spec(self, name, path=None, target=None):
        patch = self.patches.get(name)
        if patch is None:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(name, path, target)
            if spec is not None:
                if spec.loader is not None and hasattr(spec.loader, "exec_module"):
                    spec.loader = _PatchingLoader(spec.loader, patch)
                return spec
        return None

    def invalidate_caches(self):
        pass


# =====================================================================
# Harness H (trusted): runs the tests
# =====================================================================
class ProgramError(Exception):
    """An exception raised in the program process whose type is not a builtin exception."""


class ProgramDied(Exception):
    """The program process ended while the tests were talking to it."""


_EXC_TYPES = {name: obj for name, obj in vars(builtins).items()
              if isinstance(obj, type) and issubclass(obj, Exception)}
_ALLOWED_GLOBALS: dict | None = None
_CHECKED_TYPES: tuple = ()


def _allowed_globals() -> dict:
    global _ALLOWED_GLOBALS, _CHECKED_TYPES
    if _ALLOWED_GLOBALS is None:
        import collections

        allowed = {("builtins", t.__name__): t for t in _PLAIN_EXACT if t is not type(None)}
        allowed[("builtins", "Ellipsis")] = Ellipsis
        for name in ("Counter", "OrderedDict", "defaultdict", "deque"):
            allowed[("collections", name)] = getattr(collections, name)
        allowed[("__tabom_ref__", "ref")] = _REF
        allowed[("__tabom_ref__", "mod")] = _MOD
        _CHECKED_TYPES = (collections.Counter, collections.OrderedDict, collections.defaultdict,
                          collections.deque)
        _ALLOWED_GLOBALS = allowed
    return _ALLOWED_GLOBALS


def _lazy_global(module: str, name: str):
    if (module, name) == ("decimal", "Decimal"):
        import decimal

        return decimal.Decimal
    if (module, name) == ("fractions", "Fraction"):
        import fractions

        return fractions.Fraction
    return None


class _SafeUnpickler(pickle.Unpickler):
    """Builds plain data and proxies only: ``find_class`` knows a fixed set of
    plain types (never a class of the program), and no persistent ids."""

    def __init__(self, file):
        super().__init__(file)
        self.needs_check = False

    def find_class(self, module, name):
        obj = _allowed_globals().get((module, name))
        if obj is None:
            obj = _lazy_global(module, name)
            if obj is None:
                raise pickle.UnpicklingError(f"the program sent a forbidden object type {module}.{name}")
        if obj in _CHECKED_TYPES or (module, name) == ("fractions", "Fraction"):
            self.needs_check = True
        return obj


def _check_value(value) -> None:
    """Reject instances of the allowed container classes whose instance
    attributes or default factory were tampered with in the pickle."""
    import collections

    seen, stack = set(), [value]
    plain = (int, float, complex, str, bytes, bool, type(None), RemoteRef)
    while stack:
        v = stack.pop()
        t = type(v)
        if t in plain or id(v) in seen:
            continue
        seen.add(id(v))
        if t in (list, tuple, set, frozenset, collections.deque):
            stack.extend(v)
        elif t in (dict, collections.Counter, collections.OrderedDict, collections.defaultdict):
            if t is not dict and getattr(v, "__dict__", None):
                raise pickle.UnpicklingError("the program sent a tampered container")
            if t is collections.defaultdict and not (
                    v.default_factory is None or type(v.default_factory) is RemoteRef
                    or v.default_factory in _allowed_globals().values()):
                raise pickle.UnpicklingError("the program sent a tampered defaultdict")
            stack.extend(v.keys())
            stack.extend(v.values())
        elif t is slice:
            stack.extend((v.start, v.stop, v.step))
        elif type(v).__name__ == "Fraction" and type(v).__module__ == "fractions":
            if type(v.numerator) is not int or type(v.denominator) is not int or v.denominator <= 0:
                raise pickle.UnpicklingError("the program sent a tampered Fraction")


class _Client:
    """The harness's end of the channel to the program process."""

    def __init__(self, to_p: int, from_p: int, init_pid: int, deadline: float, limit: int):
        self.to_p, self.from_p, self.init_pid = to_p, from_p, init_pid
        self.deadline, self.limit = deadline, limit
        self.refs: dict[int, RemoteRef] = {}
        self.loading = False
        self.dead: str | None = None

    # -- proxies built while unpickling
    def make_ref(self, hid, type_name):
        if type(hid) is not int or type(type_name) is not str:
            raise pickle.UnpicklingError("malformed object reference")
        ref = self.refs.get(hid)
        if ref is None:
            ref = self.refs[hid] = RemoteRef(hid, type_name[:200])
        return ref

    def make_mod(self, name, hid):
        if type(name) is not str or type(hid) is not int:
            raise pickle.UnpicklingError("malformed module reference")
        if name in _LOCAL_MODULES:
            import importlib

            try:
                return importlib.import_module(name)
            except ImportError:
                pass
        return self.make_ref(hid, "module " + name[:100])

    def _load(self, data: bytes):
        self.loading = True
        try:
            up = _SafeUnpickler(io.BytesIO(data))
            value = up.load()
            if up.needs_check:
                _check_value(value)
            return value
        finally:
            self.loading = False

    def receive(self):
        try:
            data = _recv(self.from_p, self.deadline, self.limit)
        except ChannelClosed:
            self.dead = self.dead or _program_fate(self.init_pid)
            raise ProgramDied(self.dead) from None
        return self._load(data)

    def request(self, req):
        if self.loading:
            raise pickle.UnpicklingError("a program object was used while unpickling")
        if self.dead:
            raise ProgramDied(self.dead)
        buf = io.BytesIO()
        try:
            _ArgPickler(buf).dump(req)
        except Exception as e:  # noqa: BLE001
            raise TypeError(f"sandbox: this value cannot be passed to the program: {e}") from None
        try:
            _send(self.to_p, buf.getvalue())
        except (BrokenPipeError, OSError):
            self.dead = self.dead or _program_fate(self.init_pid)
            raise ProgramDied(self.dead) from None
        reply = self.receive()
        if type(reply) is not tuple or not reply:
            raise ProgramError("malformed reply from the program")
        if reply[0] == "ok" and len(reply) == 2:
            return reply[1]
        if reply[0] == "missing":
            return _MISSING
        if reply[0] == "exc" and len(reply) == 3 and type(reply[1]) is str and type(reply[2]) is str:
            raise _remote_exception(reply[1], reply[2])
        raise ProgramError("malformed reply from the program")


_MISSING = object()
_CLIENT: _Client | None = None


def _remote_exception(type_name: str, message: str) -> BaseException:
    cls = _EXC_TYPES.get(type_name)
    if cls is not None:
        try:
            exc = cls(message) if message else cls()
            exc.__suppress_context__ = True
            return exc
        except Exception:  # noqa: BLE001 - e.g. UnicodeDecodeError needs 5 arguments
            pass
    safe = "".join(c for c in type_name if c.isalnum() or c == "_")[:100] or "ProgramError"
    return type(safe, (ProgramError,), {"__module__": PROGRAM_MODULE})(message)


class _ArgPickler(pickle.Pickler):
    def __init__(self, file):
        super().__init__(file, protocol=5)

    def reducer_override(self, obj):
        if type(obj) is RemoteRef:
            return _GET, (object.__getattribute__(obj, "_hid"),)
        return NotImplemented


def _plain_or_iter(value):
    return value if type(value) is RemoteRef else iter(value)


class RemoteRef:
    """An object of the program: it lives in the program process and the
    harness only forwards calls, attribute access, iteration, indexing,
    ``len``/``bool``/``in``/``str``/``repr`` to it. Equality and hashing are by
    identity, so an object of the program never equals data of the tests."""

    __slots__ = ("_hid", "_type", "__weakref__")

    def __init__(self, hid: int, type_name: str):
        object.__setattr__(self, "_hid", hid)
        object.__setattr__(self, "_type", type_name)

    def _req(self, *req):
        return _CLIENT.request(req)

    def __call__(self, *args, **kwargs):
        return self._req("call", self._hid, args, kwargs)

    def __getattr__(self, name):
        if name.startswith("__") and name.endswith("__"):
            raise AttributeError(name)
        return self._req("getattr", self._hid, name)

    def __setattr__(self, name, value):
        self._req("setattr", self._hid, name, value)

    def __delattr__(self, name):
        self._req("delattr", self._hid, name)

    def __iter__(self):
        return _plain_or_iter(self._req("op", self._hid, "iter", ()))

    def __next__(self):
        return self._req("op", self._hid, "next", ())

    def __len__(self):
        n = self._req("op", self._hid, "len", ())
        if type(n) is not int:
            raise TypeError("len() of a program object did not return an int")
        return n

    def __bool__(self):
        b = self._req("op", self._hid, "bool", ())
        if type(b) is not bool:
            raise TypeError("bool() of a program object did not return a bool")
        return b

    def __getitem__(self, key):
        return self._req("op", self._hid, "getitem", (key,))

    def __setitem__(self, key, value):
        self._req("op", self._hid, "setitem", (key, value))

    def __delitem__(self, key):
        self._req("op", self._hid, "delitem", (key,))

    def __contains__(self, item):
        b = self._req("op", self._hid, "contains", (item,))
        if type(b) is not bool:
            raise TypeError("'in' on a program object did not return a bool")
        return b

    def _text(self, op):
        try:
            s = self._req("op", self._hid, op, ())
        except Exception:  # noqa: BLE001
            s = None
        return s if type(s) is str else f"<program object {self._type} #{self._hid}>"

    def __str__(self):
        return self._text("str")

    def __repr__(self):
        return self._text("repr")


_ROLE["ref"] = lambda hid, name: _CLIENT.make_ref(hid, name)
_ROLE["mod"] = lambda name, hid: _CLIENT.make_mod(name, hid)

# Modules of the program that the tests may use as the harness's own copy
# (``sys.getsizeof``, ``math.isclose`` ...): pure computation only.
_LOCAL_MODULES = frozenset({
    "math", "cmath", "re", "string", "collections", "collections.abc", "itertools", "functools",
    "operator", "heapq", "bisect", "sys", "decimal", "fractions", "statistics", "numbers", "typing",
    "datetime", "time", "calendar", "copy", "array", "random", "hashlib", "unicodedata",
    "textwrap", "difflib", "struct", "enum", "dataclasses", "types", "abc", "keyword",
})


class _TestNamespace(dict):
    """Globals of the tests: a name the tests do not define themselves is
    looked up in the program (and proxied); builtins come from the harness."""

    __slots__ = ()

    def __missing__(self, name):
        if type(name) is not str or (name.startswith("__") and name.endswith("__")):
            raise KeyError(name)
        value = _CLIENT.request(("get", name))
        if value is _MISSING:
            raise KeyError(name)
        if type(value) is RemoteRef or type(value) is types.ModuleType:
            dict.__setitem__(self, name, value)
        return value


def _shadowing_allowed(tests: str) -> bool:
    """May the program's definitions of builtin names (``def sum(a, b)``)
    stand for those names in the tests? Only when the tests take no other
    name from the program (MBPP's ``assert sum(10, 15) == 6``); otherwise
    the tests always see the real builtins (a program's ``abs`` cannot make
    ``abs(candidate(x) - y) < 1e-6`` hold)."""
    import symtable

    try:
        top = symtable.symtable(tests, "<tests>", "exec")
    except (SyntaxError, ValueError):
        return False
    defined = {s.get_name() for s in top.get_symbols()
               if s.is_assigned() or s.is_imported() or s.is_namespace()}
    builtin_names = set(vars(builtins))
    stack = [top]
    while stack:
        table = stack.pop()
        stack.extend(table.get_children())
        for s in table.get_symbols():
            name = s.get_name()
            if (s.is_referenced() and (table is top or s.is_global())
                    and name not in defined and name not in builtin_names):
                return False
    return True


def _program_fate(init_pid: int, wait_s: float = 2.0) -> str:
    """Why the program process went away (its init relays its status),
    without reaping the init (the parent may still hold its pid)."""
    import time

    end = time.monotonic() + wait_s
    while True:
        try:
            info = os.waitid(os.P_PID, init_pid, os.WEXITED | os.WNOWAIT | os.WNOHANG)
        except ChildProcessError:
            return "the program process ended"
        if info is not None and info.si_pid:
            code = info.si_status
            if info.si_code == os.CLD_EXITED and code < 128:
                return f"the program exited with code {code} before the tests finished"
            sig = code - 128 if info.si_code == os.CLD_EXITED else code
            return f"the program was killed by {_signal_name(sig)}"
        if time.monotonic() > end:
            return "the program closed its channel to the tests"
        time.sleep(0.005)


def _signal_name(num: int) -> str:
    import signal

    try:
        name = signal.Signals(num).name
    except ValueError:
        name = f"signal {num}"
    if num == getattr(signal, "SIGXFSZ", -1):
        name += " (file size limit)"
    if num == getattr(signal, "SIGXCPU", -1):
        name += " (CPU time limit)"
    return name


def _run_tests(client: _Client, tests: str) -> tuple[str, str]:
    # while the program runs: compile the tests, decide on builtin names
    try:
        code = compile(tests, "<tests>", "exec")
        shadowing = _shadowing_allowed(tests)
    except SyntaxError as e:
        code, syntax, shadowing = None, e, False
    try:
        first = client.receive()
    except ProgramDied as e:
        return "FAILED", f"failed: {e}"
    except Exception as e:  # noqa: BLE001
        return "FAILED", f"failed: bad first message from the program: {type(e).__name__}: {e}"
    if first != ("ready",):
        if type(first) is tuple and len(first) == 2 and first[0] == "error" and type(first[1]) is str:
            return "FAILED", "failed: " + first[1][:2000]
        return "FAILED", "failed: bad first message from the program"
    if code is None:
        return "FAILED", (f"failed: SyntaxError: {syntax.msg} (syntax error in the tests, "
                          f"line {syntax.lineno})")
    ns = _TestNamespace()
    builtin_items = {k: v for k, v in vars(builtins).items() if not k.startswith("__")}
    if shadowing:
        names = client.request(("names",))
        if type(names) is list:
            for k in names:
                if type(k) is str:
                    builtin_items.pop(k, None)
    ns.update(builtin_items)
    ns["__name__"] = PROGRAM_MODULE
    ns["__builtins__"] = builtins
    try:
        exec(code, ns)
    except SystemExit as e:
        return "FAILED", f"failed: the tests called exit({e.code!r}) before they finished"
    except BaseException as e:  # noqa: BLE001
        if isinstance(e, ProgramDied):
            return "FAILED", f"failed: {e}{_where(e.__traceback__, '<tests>', tests)}"
        msg = _exc_text(e)
        name = type(e).__name__
        where = _where(e.__traceback__, "<tests>", tests)
        return "FAILED", f"failed: {name}{': ' + msg[:500] if msg else ''}{where}"
    return "PASSED", "passed"


# =====================================================================
# Isolation (run in H before forking)
# =====================================================================
def _isolate(work: str, mode: str, uid) -> tuple[set, list]:
    """Enter new mount / network / IPC+UTS / PID namespaces (Linux, root);
    make every mount read-only except ``work``. Returns the layers in force
    and notes on those that are not."""
    layers, notes = set(), []
    if uid is not None and os.geteuid() == 0:
        layers.add("uid")
    elif mode != "off":
        notes.append("uid: not running as root, the program keeps the evaluator's uid")
    if mode == "off" or not sys.platform.startswith("linux"):
        if mode != "off":
            notes.append("namespaces: not Linux")
        return layers, notes
    try:
        libc = _c()
    except OSError as e:
        notes.append(f"namespaces: no libc ({e})")
        return layers, notes
    try:
        _check(libc.unshare(CLONE_NEWNS), "unshare(CLONE_NEWNS)")
        _mount(None, "/", None, MS_REC | MS_PRIVATE)
        if "uid" in layers:
            _expose_python(uid)
        _make_readonly()
        _mount(work, work, None, MS_BIND)
        _mount(None, work, None, MS_REMOUNT | MS_BIND | MS_NOSUID | MS_NODEV)
        layers.add("fs")
    except OSError as e:
        notes.append(f"fs: {e}")
    if "uid" in layers and "fs" not in layers and any(
            _blocked_ancestor(p, uid) for p in _python_paths()):
        layers.discard("uid")
        notes.append("uid: without a mount namespace an unprivileged uid cannot read the Python installation")
    for flag, name in ((CLONE_NEWNET, "net"), (CLONE_NEWIPC | CLONE_NEWUTS, "ipc"), (CLONE_NEWPID, "pid")):
        try:
            _check(libc.unshare(flag), f"unshare({name})")
            layers.add(name)
        except OSError as e:
            notes.append(f"{name}: {e}")
    return layers, notes


def _python_paths() -> set:
    """Folders the program process must be able to read: the Python
    installation and every entry of ``sys.path``."""
    paths = {sys.prefix, sys.base_prefix, sys.exec_prefix, os.path.dirname(sys.executable), *sys.path}
    return {os.path.realpath(p) for p in paths if p and os.path.isdir(p)}


def _blocked_ancestor(path: str, uid: int) -> str | None:
    """The topmost folder above ``path`` that ``uid`` may not traverse (say
    ``/root`` of mode 0700 above a pyenv Python), or None."""
    parts = path.strip("/").split("/")
    for i in range(len(parts)):
        anc = "/" + "/".join(parts[:i])
        st = os.stat(anc)
        if not st.st_mode & 0o001 and st.st_uid != uid:
            return anc
    return None


def _expose_python(uid: int) -> None:
    """Inside the private mount namespace, make the Python installation
    reachable for ``uid``: a folder above it that ``uid`` may not traverse is
    covered by an empty tmpfs (mode 0755) into which only the needed folders
    are bind-mounted; everything else in that folder stays hidden."""
    plan: dict[str, set] = {}
    for path in _python_paths():
        blocked = _blocked_ancestor(path, uid)
        if blocked is not None:
            plan.setdefault(blocked, set()).add(path)
    for blocked in sorted(plan, key=len):
        targets = sorted(plan[blocked], key=len)
        outer = [t for i, t in enumerate(targets)
                 if not any(t.startswith(o + "/") for o in targets[:i])]
        fds = [os.open(t, os.O_PATH | os.O_DIRECTORY) for t in outer]
        try:
            _mount("tmpfs", blocked, "tmpfs", MS_NOSUID | MS_NODEV, "mode=0755,size=64k")
            for t, fd in zip(outer, fds):
                os.makedirs(t, mode=0o755, exist_ok=True)
                _mount(f"/proc/self/fd/{fd}", t, None, MS_BIND | MS_REC)
        finally:
            for fd in fds:
                os.close(fd)


def _make_readonly() -> None:
    """All mounts of this (private) mount namespace become read-only."""
    import ctypes

    class MountAttr(ctypes.Structure):
        _fields_ = [("attr_set", ctypes.c_uint64), ("attr_clr", ctypes.c_uint64),
                    ("propagation", ctypes.c_uint64), ("userns_fd", ctypes.c_uint64)]

    attr = MountAttr(MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID, 0, 0, 0)
    ret = _c().syscall(SYS_MOUNT_SETATTR, AT_FDCWD, b"/", AT_RECURSIVE, ctypes.byref(attr),
                       ctypes.sizeof(attr))
    if ret == 0:
        return
    # Linux < 5.12: remount every mount point read-only, one by one.
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as fh:
        entries = [line.split() for line in fh]
    for fields in entries:
        target = fields[4].encode().decode("unicode_escape").encode("latin-1").decode(
            "utf-8", "surrogateescape")
        opts = set(fields[5].split(","))
        flags = MS_REMOUNT | MS_BIND | MS_RDONLY | MS_NOSUID
        flags |= MS_NODEV if "nodev" in opts else 0
        flags |= MS_NOEXEC if "noexec" in opts else 0
        _mount(None, target, None, flags)


# =====================================================================
# main (H)
# =====================================================================
def run_harness(job_path: str, verdict_fd: int) -> None:
    """Process H: read the job, isolate, fork I (and through it P), run the
    tests, write the verdict, kill I. Never returns."""
    global _CLIENT
    with open(job_path, "rb") as fh:
        job = marshal.load(fh)
    os.unlink(job_path)
    os.chdir(os.path.dirname(job_path))
    os.environ.clear()
    os.environ.update(job["env"])
    sys.modules["__tabom_ref__"] = _REFMOD

    def verdict(status: str, reason: str) -> None:
        line = f"V {status} {reason.replace(chr(10), ' ')[:3000]}\n"
        _write_all(verdict_fd, line.encode("utf-8", "replace"))

    try:
        _prctl(PR_SET_DUMPABLE, 0)      # same-uid processes cannot ptrace or read this one
        _prctl(PR_SET_PDEATHSIG, SIGKILL)
    except (OSError, AttributeError):
        pass
    layers, notes = _isolate(job["work"], job["isolation"], job.get("uid"))
    _write_all(verdict_fd, ("L " + ",".join(sorted(layers)) + ("; " + " | ".join(notes) if notes else "")
                            + "\n").encode("utf-8", "replace"))
    if job["isolation"] == "require" and notes:
        verdict("FAILED", "failed: sandbox isolation unavailable: " + " | ".join(notes))
        os._exit(0)
    p_read, h_write = os.pipe()     # harness -> program
    h_read, p_write = os.pipe()     # program -> harness
    import time

    start = time.monotonic()
    init_pid = os.fork()
    if init_pid == 0:
        os.close(h_write)
        os.close(h_read)
        _init_process(job, layers, p_write, p_read, verdict_fd)
    os.close(p_read)
    os.close(p_write)
    _write_all(verdict_fd, f"I {init_pid}\n".encode())
    status, reason = "FAILED", "failed: sandbox error"
    try:
        if "uid" in layers:   # nothing privileged is left to do: unpickle as nobody
            _drop_privileges(job["harness_uid"])
        os.chdir(job["work"])   # the tests see the program's files (never imported: no '' in sys.path)
        import resource

        mem = (int(job["memory_mb"]) + 512) * 1024 * 1024
        for lim in (resource.RLIMIT_AS, resource.RLIMIT_DATA):
            try:
                resource.setrlimit(lim, (mem, mem))
            except (ValueError, OSError):
                pass
        _CLIENT = _Client(h_write, h_read, init_pid, start + float(job["timeout"]) + 5.0,
                          min(MAX_FRAME, mem))
        status, reason = _run_tests(_CLIENT, job["tests"])
    except BaseException as e:  # noqa: BLE001
        status, reason = "FAILED", f"failed: sandbox error: {type(e).__name__}: {e}"
    finally:
        try:
            verdict(status, reason)
        finally:
            try:
                try:
                    os.kill(init_pid, SIGKILL)
                except PermissionError:  # I has not dropped to our uid yet: it dies with us
                    os._exit(0)
                os.waitpid(init_pid, 0)
                if "pid" not in layers:   # no PID namespace: whatever is left in our group
                    os.killpg(os.getpgrp(), SIGKILL)
            finally:
                os._exit(0)


def _fork_server(sock_fd: int) -> None:
    """The fork server Z: a trusted process started once per evaluator, with
    everything a harness needs already imported. Each request (a job path and
    two descriptors: the verdict pipe and the output file) forks one harness
    H; the reply is H's pid and a pidfd for it. Harnesses are reaped
    automatically (SIGCHLD ignored). Exits when the evaluator closes the
    socket (or dies). Z never reads a job, so it holds nothing of any sample."""
    import signal
    import socket
    import symtable  # noqa: F401 - preloaded for the harnesses
    import resource  # noqa: F401
    import faulthandler  # noqa: F401
    import collections  # noqa: F401

    _allowed_globals()
    try:
        _c()
    except OSError:
        pass
    sock = socket.socket(fileno=sock_fd)
    signal.signal(signal.SIGCHLD, signal.SIG_IGN)
    while True:
        try:
            msg, fds, _, _ = socket.recv_fds(sock, 65536, 4)
        except OSError:
            os._exit(0)
        if not msg:
            os._exit(0)
        if len(fds) != 2:
            for fd in fds:
                os.close(fd)
            sock.send(b"E bad request")
            continue
        verdict_fd, out_fd = fds
        try:
            pid = os.fork()
        except OSError as e:
            for fd in fds:
                os.close(fd)
            sock.send(f"E fork: {e}".encode())
            continue
        if pid == 0:
            try:
                sock.close()
                signal.signal(signal.SIGCHLD, signal.SIG_DFL)
                os.setsid()
                null = os.open(os.devnull, os.O_RDONLY)
                os.dup2(null, 0)
                os.dup2(out_fd, 1)
                os.dup2(out_fd, 2)
                os.close(null)
                os.close(out_fd)
                run_harness(os.fsdecode(msg), verdict_fd)
            finally:
                os._exit(70)
        for fd in fds:
            os.close(fd)
        try:
            pidfd = os.pidfd_open(pid)   # before any reaping: surely H
        except OSError as e:
            os.kill(pid, SIGKILL)
            sock.send(f"E pidfd_open: {e}".encode())
            continue
        try:
            socket.send_fds(sock, [f"P {pid}".encode()], [pidfd])
        except OSError:
            os._exit(0)
        finally:
            os.close(pidfd)


def main(argv: list[str]) -> None:
    if argv[1:2] == ["--server"]:
        _fork_server(int(argv[2]))
    else:
        run_harness(argv[1], int(argv[2]))


if __name__ == "__main__":
    main(sys.argv)
