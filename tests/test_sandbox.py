"""tabom.sandbox: hostile programs.

Each hostile program is a *wrong* solution plus an attack. It must be a
failed sample, leave no process and no file behind (outside its working
folder, which is removed), and the evaluator (this pytest process) must
survive. The OS-level checks run where the sandbox has its OS layers (Linux,
root); the verdict-level ones run everywhere, also with
``TABOM_SANDBOX_ISOLATION=off``.
"""

from __future__ import annotations

import os
import shutil
import socket
import sys
import tempfile
import time
import uuid
import warnings
from pathlib import Path

import pytest

from tabom import sandbox as SB
from tabom import scoring as S

RIGHT = "def f(x):\n    return 2 * x\n"
WRONG = "def f(x):\n    return x\n"
# HumanEval-style: the candidate is passed to check(); builtins in the checks.
TESTS = ("def check(candidate):\n"
         "    assert abs(candidate(2) - 4) < 1e-6\n"
         "    assert candidate(3) == 6\n"
         "    assert isinstance(candidate(1), int) and len([candidate(0)]) == 1\n"
         "check(f)\n")

LAYERS = SB.isolation_layers()
OS_LAYERS = pytest.mark.skipif(
    not {"uid", "fs", "net", "pid"} <= LAYERS,
    reason=f"the sandbox's OS layers are not available here (active: {sorted(LAYERS)})")


# ------------------------------------------------------------------ fixtures
@pytest.fixture(params=["forkserver", "direct"])
def spawn(request, monkeypatch):
    """Both ways of starting a sample's harness."""
    monkeypatch.setenv("TABOM_SANDBOX_FORKSERVER", "1" if request.param == "forkserver" else "0")
    return request.param


class Box:
    """A private temporary root for the sandbox's folders, the uids it used and
    a marker; after the test: no process of the sample, no folder left."""

    def __init__(self, root: Path):
        self.root = root
        self.uids: set[int] = set()
        self.marker = f"tabom-hostile-{uuid.uuid4().hex}"
        self.outside = root / f"outside-{self.marker}"          # must never appear
        self.tmp_outside = Path("/tmp") / f"outside-{self.marker}"  # world-writable folder
        self.victim = root / f"victim-{self.marker}"            # must never disappear
        self.victim.write_text("keep me")
        self.victim.chmod(0o666)

    def fmt(self, code: str) -> str:
        return (code.replace("OUTSIDE_TMP", repr(str(self.tmp_outside)))
                .replace("OUTSIDE", repr(str(self.outside))).replace("VICTIM", repr(str(self.victim)))
                .replace("MARKER", repr(self.marker)).replace("EVALUATOR_PID", str(os.getpid()))
                .replace("SLEEPER", repr("import time\nwhile True: time.sleep(1)")))

    def run(self, attack: str, wrong: str = WRONG, tests: str = TESTS, **kw) -> dict:
        return S.run_tests(wrong + self.fmt(attack), tests, **kw)

    def processes(self) -> list:
        """Live processes of the sandbox: its uids, the marker, the temp root,
        or children of the fork server."""
        server = SB._FORK_SERVER.proc.pid if SB._FORK_SERVER.proc is not None else None
        found = []
        for d in os.listdir("/proc"):
            if not d.isdigit() or int(d) == os.getpid():
                continue
            try:
                status = Path(f"/proc/{d}/status").read_text()
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode(
                    "utf-8", "replace")
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            if fields.get("State", "").strip().startswith("Z"):
                continue
            uid = int(fields.get("Uid", "-1").split()[0])
            ppid = int(fields.get("PPid", "0").strip())
            if (uid in self.uids or self.marker in cmd or str(self.root) in cmd
                    or (server is not None and ppid == server)):
                found.append((int(d), uid, cmd[:120]))
        return found

    def check_clean(self) -> None:
        deadline = time.monotonic() + 2.0
        while (left := self.processes()) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not left, f"sandbox processes left behind: {left}"
        assert not self.outside.exists() and not self.tmp_outside.exists()
        assert self.victim.read_text() == "keep me"
        assert sorted(p.name for p in self.root.iterdir()) == [self.victim.name], \
            "temporary folders left behind"


@pytest.fixture
def box(monkeypatch):
    root = Path(tempfile.mkdtemp(prefix="tabom-sbxtest-", dir="/tmp"))
    root.chmod(0o755)
    monkeypatch.setattr(tempfile, "tempdir", str(root))
    b = Box(root)
    real = SB._acquire_uid

    def acquire():
        uid = real()
        b.uids.update((uid, uid + 1))
        return uid

    monkeypatch.setattr(SB, "_acquire_uid", acquire)
    try:
        yield b
        b.check_clean()
    finally:
        shutil.rmtree(root, ignore_errors=True)
        b.tmp_outside.unlink(missing_ok=True)


def failed(out: dict) -> bool:
    return out["passed"] is False and out["result"].startswith(("failed", "timed out"))


# ------------------------------------------------------------------ baseline
def test_right_and_wrong(box, spawn):
    assert box.run("", wrong=RIGHT) == {"passed": True, "result": "passed"}
    out = box.run("")
    assert failed(out) and "AssertionError" in out["result"]


def test_layers_are_reported():
    assert {"uid", "fs", "net", "pid", "ipc"} >= LAYERS
    if sys.platform.startswith("linux") and os.geteuid() == 0:
        assert {"uid", "fs", "net", "pid"} <= LAYERS


# ------------------------------------------------------------------ forged verdicts
FORGED = {
    "__main__.verdict": "import __main__\n__main__.verdict('PASSED', 'passed')\n",
    "frames": (
        "import sys\n"
        "fr = sys._getframe()\n"
        "while fr is not None:\n"
        "    for k, v in list(fr.f_locals.items()) + list(fr.f_globals.items()):\n"
        "        if 'verdict' in str(k) and callable(v):\n"
        "            try:\n"
        "                v('PASSED', 'passed')\n"
        "            except BaseException:\n"
        "                pass\n"
        "    fr = fr.f_back\n"),
    "gc": (
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    if callable(o) and 'verdict' in str(getattr(o, '__name__', '')):\n"
        "        try:\n"
        "            o('PASSED', 'passed')\n"
        "        except BaseException:\n"
        "            pass\n"),
    "every fd": (
        "import os\n"
        "for fd in range(0, 300):\n"
        "    for line in (b'\\nV PASSED passed\\n', b'PASSED passed\\n'):\n"
        "        try:\n"
        "            os.write(fd, line)\n"
        "        except OSError:\n"
        "            pass\n"),
    "print then exit": "print('V PASSED passed')\nprint('PASSED passed')\nimport os\nos._exit(0)\n",
    "patched reply pickle": (
        "import sys\n"
        "sys.modules['__main__']._dumps_result = lambda reply: b\"cposix\\nsystem\\n(S'true'\\ntR.\"\n"),
    "reply claims True": (
        "import sys, pickle\n"
        "sys.modules['__main__']._dumps_result = lambda reply: pickle.dumps(('ok', True))\n"),
}


@pytest.mark.parametrize("name", list(FORGED))
def test_forged_verdict_fails(box, spawn, name):
    out = box.run(FORGED[name])
    assert failed(out), (name, out)


@pytest.mark.parametrize("name", ["__main__.verdict", "frames", "gc", "every fd", "patched reply pickle"])
def test_forged_verdict_fails_without_os_layers(box, monkeypatch, name):
    monkeypatch.setenv("TABOM_SANDBOX_ISOLATION", "off")
    assert failed(box.run(FORGED[name])), name


def test_forbidden_reply_is_reported(box):
    out = box.run(FORGED["patched reply pickle"])
    assert failed(out) and "forbidden" in out["result"], out


# ------------------------------------------------------------------ patched builtins, lying objects
TESTS_ABS = ("def check(candidate):\n"
             "    assert abs(candidate(2) - 4) < 1e-6\n"
             "    assert abs(candidate(3.5) - 7) < 1e-6\n"
             "check(f)\n")
TESTS_EQ = "assert f(2) == 4\nassert f(3) == 6\nassert isinstance(f(1), int)\n"
ANYTHING = ("class Anything:\n"
            "    def __eq__(self, other):\n        return True\n"
            "    def __sub__(self, other):\n        return self\n"
            "    __rsub__ = __sub__\n"
            "    def __abs__(self):\n        return 0\n"
            "    def __lt__(self, other):\n        return True\n"
            "    def __hash__(self):\n        return 0\n")
# (attack, tests): all but "sys.modules builtins" made the old single-process
# sandbox (program and tests in one process) pass the wrong solution
PATCHED = {
    "builtins.abs": ("import builtins\nbuiltins.abs = lambda v: 0\n", TESTS_ABS),
    "builtins.__dict__": ("import builtins\nbuiltins.__dict__['abs'] = lambda v: 0\n", TESTS_ABS),
    "builtins.isinstance": (ANYTHING + "def f(x):\n    return Anything()\n"
                            "import builtins\nbuiltins.isinstance = lambda *a: True\n", TESTS_EQ),
    "sys.modules builtins": (
        "import sys, types\n"
        "fake = types.ModuleType('builtins')\nfake.__dict__.update(vars(sys.modules['builtins']))\n"
        "fake.abs = lambda v: 0\nsys.modules['builtins'] = fake\n", TESTS_ABS),
    "global named abs": ("def abs(v):\n    return 0\n", TESTS_ABS),
    "lying __eq__": (ANYTHING + "def f(x):\n    return Anything()\n"
                     "def isinstance(*a):\n    return True\n", TESTS_EQ),
    "lying int subclass": ("class E(int):\n"
                           "    def __eq__(self, other):\n        return True\n"
                           "    __hash__ = int.__hash__\n"
                           "def f(x):\n    return E(x)\n", TESTS_EQ),
    "everything": (ANYTHING + "def f(x):\n    return Anything()\n"
                   "import builtins\nbuiltins.abs = lambda v: 0\n"
                   "builtins.isinstance = lambda *a: True\n", TESTS),
}


@pytest.mark.parametrize("name", list(PATCHED))
def test_patched_builtins_and_lying_objects_fail(box, spawn, name):
    attack, tests = PATCHED[name]
    out = box.run(attack, tests=tests)
    assert failed(out), (name, out)
    assert box.run("", wrong=RIGHT, tests=tests)["passed"]


@pytest.mark.parametrize("name", ["builtins.abs", "global named abs", "lying __eq__", "lying int subclass"])
def test_patched_builtins_fail_without_os_layers(box, monkeypatch, name):
    monkeypatch.setenv("TABOM_SANDBOX_ISOLATION", "off")
    attack, tests = PATCHED[name]
    assert failed(box.run(attack, tests=tests)), name


def test_program_defining_a_builtin_name_as_entry_point():
    # MBPP 126: the function under test is called ``sum``
    prog = "def sum(a, b):\n    return sum_([i for i in range(1, min(a, b)) if a % i == 0 and b % i == 0])\n"
    prog = "sum_ = sum\n" + prog
    assert S.run_tests(prog, "assert sum(10, 15) == 6\n")["passed"]
    assert not S.run_tests("def sum(a, b):\n    return None\n", "assert sum(10, 15) == 6\n")["passed"]


# ------------------------------------------------------------------ files
FILES = {
    "io.FileIO": ("import io\n"
                  "for p in (OUTSIDE, OUTSIDE_TMP):\n"
                  "    try:\n        io.FileIO(p, 'w').write(b'x')\n    except OSError:\n        pass\n"),
    "posix re-import": (
        "import sys\n"
        "del sys.modules['posix']\n"
        "import posix\n"
        "for p in (OUTSIDE, OUTSIDE_TMP):\n"
        "    try:\n"
        "        fd = posix.open(p, posix.O_WRONLY | posix.O_CREAT, 0o666)\n"
        "        posix.write(fd, b'x')\n"
        "    except OSError:\n"
        "        pass\n"
        "try:\n    posix.unlink(VICTIM)\nexcept OSError:\n    pass\n"
        "try:\n    fd = posix.open(VICTIM, posix.O_WRONLY | posix.O_TRUNC)\nexcept OSError:\n    pass\n"),
}


@OS_LAYERS
@pytest.mark.parametrize("name", list(FILES))
def test_no_write_or_delete_outside(box, spawn, name):
    out = box.run(FILES[name])
    assert failed(out), (name, out)


SUBPROCESS = (
    "import sys\n"
    "sys.meta_path[:] = [f for f in sys.meta_path if type(f).__name__ != '_PatchOnImport']\n"
    "for m in ('subprocess', '_posixsubprocess'):\n"
    "    sys.modules.pop(m, None)\n"
    "import subprocess\n"
    "cmd = 'id -u; echo x > ' + OUTSIDE + '; echo x > ' + OUTSIDE_TMP + '; rm -f ' + VICTIM\n"
    "r = subprocess.run(['sh', '-c', cmd], capture_output=True, text=True)\n"
    "raise RuntimeError('command ran as uid ' + r.stdout.strip().split()[0])\n")


@OS_LAYERS
def test_commands_run_unprivileged_and_cannot_write(box, spawn):
    out = box.run(SUBPROCESS)
    assert failed(out) and "command ran as uid" in out["result"], out
    uid = int(out["result"].split("command ran as uid ")[1].split()[0])
    assert uid != 0 and uid != os.getuid() and uid in box.uids


# ------------------------------------------------------------------ processes
ORPHANS = (
    "import sys\n"
    "del sys.modules['posix']\n"
    "import posix\n"
    "for _ in range(3):\n"
    "    if posix.fork() == 0:\n"
    "        posix.setsid()\n"
    "        if posix.fork() == 0:\n"
    "            posix.execv(sys.executable, [sys.executable, '-c', SLEEPER, MARKER])\n"
    "        if posix.fork() == 0:\n"
    "            import time\n"
    "            while True:\n"
    "                time.sleep(1)\n"
    "        posix._exit(0)\n")


@OS_LAYERS
def test_setsid_double_fork_orphans_are_killed(box, spawn):
    out = box.run(ORPHANS)
    assert failed(out) and "AssertionError" in out["result"], out


KILLERS = (
    "import sys, signal\n"
    "del sys.modules['posix']\n"
    "import posix\n"
    "for pid in (posix.getppid(), EVALUATOR_PID, -EVALUATOR_PID, 1, -1):\n"
    "    try:\n"
    "        posix.kill(pid, signal.SIGKILL)\n"
    "    except OSError:\n"
    "        pass\n")


@OS_LAYERS
def test_cannot_kill_the_evaluator(box, spawn):
    pid = os.getpid()
    out = box.run(KILLERS)
    assert failed(out), out
    assert os.getpid() == pid   # still here
    # and the sandbox still works afterwards
    assert box.run("", wrong=RIGHT)["passed"]


def test_exit_before_the_tests_fails(box, spawn):
    for code in ("import os\nos._exit(0)\n", "import sys\nsys.exit(0)\n", "raise SystemExit(0)\n",
                 "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\n"):
        out = box.run(code, wrong=RIGHT)
        assert failed(out), (code, out)


def test_timeout_kills_everything(box, spawn):
    t0 = time.monotonic()
    out = box.run(ORPHANS.replace("posix._exit(0)\n", "posix._exit(0)\nwhile True:\n    pass\n"),
                  wrong=RIGHT, timeout=2.0)
    assert out == {"passed": False, "result": "timed out after 2 s"}
    assert time.monotonic() - t0 < 8


def test_timeout_inside_a_call(box, spawn):
    t0 = time.monotonic()
    out = box.run("import time\ndef f(x):\n    time.sleep(3600)\n", timeout=2.0)
    assert out["result"] == "timed out after 2 s" and time.monotonic() - t0 < 8


# ------------------------------------------------------------------ network
@OS_LAYERS
def test_no_network(box, spawn):
    with socket.socket() as server:
        server.bind(("127.0.0.1", 0))
        server.listen(5)
        server.settimeout(0.5)
        port = server.getsockname()[1]
        attack = ("import socket\n"
                  "for host in ('127.0.0.1', 'localhost'):\n"
                  "    try:\n"
                  f"        s = socket.create_connection((host, {port}), timeout=1)\n"
                  "        s.sendall(b'hello')\n"
                  "    except OSError:\n"
                  "        pass\n")
        out = box.run(attack)
        assert failed(out), out
        with pytest.raises(socket.timeout):
            server.accept()


# ------------------------------------------------------------------ the proxy protocol still works
def test_program_objects_through_proxies(box, spawn):
    prog = ("class Node:\n"
            "    def __init__(self, d):\n        self.d, self.left = d, None\n"
            "def depth(n):\n    return 0 if n is None else 1 + depth(n.left)\n"
            "def gen(n):\n    yield from range(n)\n"
            "import math\n"
            "def stats(xs):\n    from collections import Counter\n    return Counter(xs)\n")
    tests = ("root = Node(1)\nroot.left = Node(2)\nroot.left.left = Node(3)\n"
             "assert depth(root) == 3 and root.left.d == 2\n"
             "assert list(gen(4)) == [0, 1, 2, 3] and sum(gen(3)) == 3\n"
             "assert math.isclose(math.sqrt(2) ** 2, 2)\n"
             "assert stats('aab') == {'a': 2, 'b': 1}\n"
             "assert Node(1) != Node(1) and root == root\n"
             "try:\n    depth(5)\nexcept AttributeError:\n    pass\nelse:\n    raise AssertionError\n")
    assert box.run("", wrong=prog, tests=tests) == {"passed": True, "result": "passed"}


def test_require_mode(box, monkeypatch):
    monkeypatch.setenv("TABOM_SANDBOX_ISOLATION", "require")
    out = box.run("", wrong=RIGHT)
    if {"uid", "fs", "net", "pid", "ipc"} <= LAYERS:
        assert out["passed"]
    else:
        assert not out["passed"] and "isolation unavailable" in out["result"]


def test_tests_see_the_programs_files_but_never_import_them(box, spawn):
    prog = ("def f(x):\n    return 2 * x\n"
            "open('data.txt', 'w').write('42')\n"
            "for name in ('statistics', 'bisect', 'heapq'):\n"
            "    with open(name + '.py', 'w') as fh:\n"
            "        fh.write('def mean(x):\\n    return 0\\ndef bisect(*a):\\n    return 0\\n')\n")
    tests = ("import statistics, bisect\n"
             "assert open('data.txt').read() == '42'\n"
             "assert statistics.mean([1, 3]) == 2 and bisect.bisect([1, 2, 3], 2) == 2\n"
             "assert f(2) == 4\n")
    assert box.run("", wrong=prog, tests=tests) == {"passed": True, "result": "passed"}


@OS_LAYERS
def test_hostile_samples_in_parallel_leave_nothing(box):
    jobs = [(WRONG + box.fmt(ORPHANS), TESTS), (RIGHT, TESTS)] * 4
    out = S.run_tests_parallel(jobs, max_workers=8)
    assert [o["passed"] for o in out] == [False, True] * 4


EVALUATOR = """
import os, sys, tempfile, threading
sys.path.insert(0, {repo!r})
tempfile.tempdir = {root!r}
from tabom import scoring
program = {program!r}

def one():
    try:
        print("returned", scoring.run_tests(program, "assert True\\n", timeout=120), flush=True)
    except BaseException as e:  # the test shows it when the program never starts
        print("raised", repr(e), flush=True)

threading.Thread(target=one).start()
threading.Thread(target=one).start()
print("started", flush=True)
"""


@pytest.mark.parametrize("forkserver", ["1", "0"])
def test_killed_evaluator_leaves_no_sandbox_process(box, forkserver):
    import signal
    import subprocess

    program = box.fmt(
        "import sys\n"
        "del sys.modules['posix']\n"
        "import posix\n"
        "if posix.fork() == 0:\n"
        "    posix.setsid()\n"
        "    posix.execv(sys.executable, [sys.executable, '-c', SLEEPER, MARKER])\n"
        "import time\n"
        "while True:\n"
        "    time.sleep(1)\n")
    code = EVALUATOR.format(repo=str(Path(__file__).resolve().parents[1]), root=str(box.root),
                            program=program)
    env = dict(os.environ, TABOM_SANDBOX_FORKSERVER=forkserver)
    log = box.root.parent / f"{box.root.name}.evaluator.log"   # outside the checked root

    def sleepers():  # what the program started (the evaluator's own command line holds the marker too)
        return [p for p in box.processes() if p[0] != ev.pid and box.marker in p[2]]

    def samples():   # the evaluator's sandbox: its fork server, the harnesses, the programs
        lo, hi = SB._UID_RANGE
        found = []
        for d in filter(str.isdigit, os.listdir("/proc")):
            try:
                status = Path(f"/proc/{d}/status").read_text()
                cmd = Path(f"/proc/{d}/cmdline").read_bytes().replace(b"\0", b" ").decode("utf-8", "replace")
            except OSError:
                continue
            f = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
            uid, ppid = int(f["Uid"].split()[0]), int(f["PPid"].strip())
            if int(d) != ev.pid and not f["State"].strip().startswith("Z") and (
                    str(box.root) in cmd or lo <= uid < hi or ppid == ev.pid):
                found.append((int(d), uid, cmd[:120]))
        return found

    with open(log, "w+b") as out:
        ev = subprocess.Popen([sys.executable, "-c", code + "import time\ntime.sleep(600)\n"],
                              stdout=out, stderr=subprocess.STDOUT, env=env)
        try:
            deadline = time.monotonic() + 60
            while not sleepers() and time.monotonic() < deadline:
                assert ev.poll() is None, log.read_text(errors="replace")[-3000:]
                time.sleep(0.05)
            if not sleepers():
                # Seen once on a CI machine, never reproduced: the program did not get its
                # sleeper running. What must hold still holds for the samples' own processes.
                assert samples(), ("neither the samples nor their sleepers are visible; evaluator said: "
                                   + log.read_text(errors="replace")[-3000:])
                warnings.warn("the hostile program's sleeper never started; evaluator said: "
                              + log.read_text(errors="replace")[-2000:] + f"; processes: {box.processes()}")
        finally:
            ev.send_signal(signal.SIGKILL)
            ev.wait()
            log.unlink(missing_ok=True)
    deadline = time.monotonic() + 10
    while sleepers() or samples():
        assert time.monotonic() < deadline, box.processes()
        time.sleep(0.05)
    if {"uid", "pid"} <= LAYERS:   # every process of the samples is gone, not only the marked ones
        while [p for p in box.processes() if p[1] in box.uids or box.marker in p[2]]:
            assert time.monotonic() < deadline, box.processes()
            time.sleep(0.05)
    # the killed evaluator could not remove its temporary folders: that is all it leaves
    for d in box.root.glob("tabom-exec-*"):
        shutil.rmtree(d)


def test_fork_server_restarts_and_stops(box):
    import signal

    assert box.run("", wrong=RIGHT)["passed"]
    server = SB._FORK_SERVER.proc
    if server is None:
        pytest.skip("no fork server on this platform")
    os.kill(server.pid, signal.SIGKILL)
    server.wait()
    assert box.run("", wrong=RIGHT)["passed"]          # a new one
    assert SB._FORK_SERVER.proc is not None and SB._FORK_SERVER.proc.pid != server.pid
    SB.shutdown_fork_server()
    assert SB._FORK_SERVER.proc is None
    assert box.run("", wrong=RIGHT)["passed"]
