"""Run model-written Python code in a sandbox (docs/design.md, the sandbox's threat model).

A run: ``sys.executable -I -S sandbox_launcher.py`` starts in a new session and process group, sets up the
jail as root, then execs an isolated interpreter (``python -I -S -B main.py``, empty environment but
``PATH``) on the code. The launcher is a separate program, not a ``preexec_fn``, so ``run_many`` can use threads. Layers:

- **dedicated uid** (root only): the code runs as a uid leased from a pool (``UID_BASE``.., uids no account
  uses, one per concurrent run, ``flock``-ed across processes), with no supplementary groups and
  ``no_new_privs``. It cannot signal or ptrace the trainer or another run, read root's
  ``/proc/<pid>/environ``, or write to root-owned directories.
- **RLIMIT_NPROC** contains fork bombs: enforced because the uid is not root (the kernel skips the check for
  CAP_SYS_RESOURCE/CAP_SYS_ADMIN) and exact because the uid is this run's alone.
- **pid namespace**: the launcher forks an init (pid 1 of a new pid namespace, root) that mounts a fresh
  ``/proc`` (the code sees only its own processes), forks the code and reaps; when the code's main process
  ends, the init exits and the kernel kills every process left in the namespace, ``setsid`` escapees and
  daemons included. A sweep of the uid (``kill(-1, SIGKILL)`` run as that uid) checks and backs this up.
- **wall clock**: at ``timeout_s`` the init is SIGKILLed (taking the namespace with it), or the process group
  without a pid namespace; ``RLIMIT_CPU`` as well.
- **RLIMIT_AS** (memory bombs: ``MemoryError`` -> "memory"), **RLIMIT_FSIZE** (files and output: stdout and
  stderr go to files, only the first ``max_output_bytes`` are read back), RLIMIT_NOFILE, RLIMIT_CORE=0.
- **network namespace**: empty, even loopback is unreachable.
- **mount namespace**: ``/tmp``, ``/var/tmp``, ``/dev/shm`` (the world-writable places) and ``/run`` (where
  daemons keep their unix sockets: dbus, docker, databases; ``/var/run`` links there) are private, size-capped
  ``nosuid,nodev,noexec`` tmpfs that vanish with the run; the code runs in ``/tmp/work``. ``/root``, ``/home``
  and the trainer's working directory are covered by empty read-only tmpfs (the code cannot read the data
  set's answers or a world-readable token there). Abstract unix sockets belong to the network namespace.
- **seccomp** (where the kernel allows it): ``unshare``, ``setns`` and namespace-creating ``clone`` fail, so
  the code cannot create a user namespace (and with it the kernel surface that unprivileged-root opens).
- **no orphans**: the launcher has its own deadline and dies with its parent (PR_SET_PDEATHSIG), and so does
  the init; killing the trainer mid-run ends the run. Run directories (``/tmp/alignkit-sandbox-<pid>-*``)
  that a killed trainer left behind are removed on the next first use once their owner is dead.

Availability is probed once, on first use: a missing layer falls back with one logged warning
(``sandbox_setup().weaknesses()`` lists what is given up; ``code_reward`` refuses to run on a weak sandbox
unless told ``allow_weak_isolation``), and results carry ``network_isolated`` and ``uid``. Without root there is no uid separation (the code could signal the
trainer's processes) and only a network namespace via a user namespace is tried. The interpreter is the
trainer's own when the sandbox uid can run it, else the system ``python3`` (stdlib only either way).
Statuses: "ok", "error" (non-zero exit), "timeout" (wall clock or CPU), "memory", "output_limit" (a file or the
output reached ``max_file_mb``, or stdout/stderr went past ``max_output_bytes``: what was read back is not all
there was, even if the code caught the write error and exited 0), "killed" (another signal), "sandbox_failure" (the jail or the interpreter
could not be set up: reported through a pipe that is closed at exec, so the code cannot fake it).
Not contained: reading world-readable files outside the hidden directories; unix sockets outside ``/run``
and ``/tmp`` whose file mode lets "other" connect; CPU contention with the trainer (bound ``workers``);
kernel bugs reachable through the syscalls seccomp allows. See docs/sandbox.md.
"""

from __future__ import annotations

import fcntl
import functools
import json
import logging
import os
import pwd
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Iterator, Sequence
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from dataclasses import dataclass

logger = logging.getLogger(__name__)

UID_BASE = 59000
UID_POOL = 64
_PATH = "/usr/local/bin:/usr/bin:/bin"
_CLONE_NEWNS, _CLONE_NEWUSER, _CLONE_NEWPID, _CLONE_NEWNET = 0x00020000, 0x10000000, 0x20000000, 0x40000000

_DEADLINE_GRACE_S = 3.0  # the launcher's own deadline: the trainer's wall clock plus this
_LAUNCHER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "sandbox_launcher.py")


@dataclass(frozen=True)
class SandboxResult:
    """Outcome of one sandboxed run. ``stdout``/``stderr`` hold at most ``max_output_bytes`` each (decoded,
    errors replaced; ``truncated`` says whether more was written). ``returncode`` is negative for a signal,
    None when the code never ran or was killed at the wall clock. ``uid`` is the sandbox uid (None without root)."""

    status: str
    returncode: int | None
    stdout: str
    stderr: str
    wall_s: float
    truncated: bool = False
    network_isolated: bool = False
    uid: int | None = None
    detail: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclass(frozen=True)
class _Setup:
    python: str | None  # an interpreter the sandbox user can run; None when none works
    unshare: int
    private_tmp: bool
    problem: str = ""
    separate_uid: bool = False
    seccomp: bool = False

    def weaknesses(self) -> list[str]:
        """What this machine's sandbox gives up against the full design, one phrase each (empty: full)."""
        missing = []
        if self.python is None:
            return [f"no usable sandbox ({self.problem})"]
        if not self.separate_uid:
            missing.append("no separate uid (not root): the code runs as the trainer's user and can signal or "
                           "ptrace its processes, read and write its files, and fork bombs are not capped")
        if not self.unshare & _CLONE_NEWNET:
            missing.append("no network namespace: the code can reach the network")
        if not self.unshare & _CLONE_NEWPID:
            missing.append("no pid namespace: the code sees every process and daemons it starts may outlive "
                           "the run")
        if not self.private_tmp:
            missing.append("no mount namespace: /tmp, /run (unix sockets) and the trainer's directories are "
                           "shared")
        if not self.seccomp:
            missing.append("no seccomp filter: the code can create user namespaces")
        return missing


_SETUP: _Setup | None = None
_SETUP_LOCK = threading.Lock()
_RUN_DIR_PREFIX = "alignkit-sandbox-"
_RUN_DIR = re.compile(r"alignkit-sandbox-(?:(\d+)-)?[a-z0-9_]{8}$")  # mkdtemp suffixes are 8 characters
STALE_RUN_DIR_S = 300.0  # an unnamed-owner run directory older than this is a crashed run's


def _is_root() -> bool:
    return os.geteuid() == 0


@functools.cache
def _free_uids() -> tuple[int, ...]:
    """Pool uids that no account uses (we kill every process of a leased uid: it must be ours alone)."""
    free = []
    for uid in range(UID_BASE, UID_BASE + UID_POOL):
        try:
            pwd.getpwuid(uid)
        except KeyError:
            free.append(uid)
    return tuple(free)


@contextmanager
def _lease_uid(deadline: float) -> Iterator[int | None]:
    """A uid for this run alone (None when not root), locked with flock so other processes skip it."""
    if not _is_root():
        yield None
        return
    lock_dir = os.path.join(tempfile.gettempdir(), "alignkit-sandbox-uids")
    os.makedirs(lock_dir, mode=0o700, exist_ok=True)
    if os.stat(lock_dir).st_uid != 0:
        raise OSError(f"{lock_dir} is not owned by root")
    while True:
        for uid in _free_uids():
            fd = os.open(os.path.join(lock_dir, str(uid)), os.O_CREAT | os.O_RDWR, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                os.close(fd)
                continue
            try:
                _kill_uid(uid)  # leftovers of a crashed run
                yield uid
            finally:
                os.close(fd)  # releases the lock
            return
        if time.monotonic() > deadline:
            raise TimeoutError("no free sandbox uid (all leased)")
        time.sleep(0.02)


def processes_of_uid(uid: int) -> list[int]:
    """Live (non-zombie) pids whose owner, as /proc shows it, is ``uid``."""
    pids = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                if entry.stat().st_uid == uid:
                    with open(f"/proc/{entry.name}/stat", "rb") as f:
                        state = f.read().rpartition(b")")[2].split()[0]
                    if state != b"Z":
                        pids.append(int(entry.name))
            except (OSError, IndexError):
                pass
    return pids


def _kill_uid(uid: int, attempts: int = 20) -> bool:
    """SIGKILL every process of ``uid`` via ``kill(-1, SIGKILL)`` run as that uid (atomic w.r.t. fork)."""
    script = f"import os; os.setgroups([]); os.setresgid({uid},{uid},{uid}); os.setresuid({uid},{uid},{uid}); os.kill(-1, 9)"
    for _ in range(attempts):
        if not processes_of_uid(uid):
            return True
        subprocess.run([sys.executable, "-I", "-S", "-c", script], env={}, stdin=subprocess.DEVNULL,
                       stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, timeout=10, check=False)
        time.sleep(0.01)
    left = processes_of_uid(uid)
    if left:
        logger.error("sandbox uid %d: %d processes survive SIGKILL", uid, len(left))
    return not left


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def sweep_stale_run_dirs(tmp: str | None = None, *, max_age_s: float = STALE_RUN_DIR_S) -> list[str]:
    """Remove run directories left by a killed trainer: ``alignkit-sandbox-<pid>-*`` whose pid is dead (or that
    are older than an hour: the pid may have been reused; no run lasts that long), and old-style unnamed ones
    older than ``max_age_s``. Returns the removed paths. Runs once per process, on first use of the sandbox."""
    tmp = tmp or tempfile.gettempdir()
    removed = []
    now = time.time()
    try:
        entries = list(os.scandir(tmp))
    except OSError:
        return removed
    for entry in entries:
        m = _RUN_DIR.match(entry.name)
        if not m:
            continue
        try:
            st = entry.stat(follow_symlinks=False)
        except OSError:
            continue
        if not entry.is_dir(follow_symlinks=False) or st.st_uid != os.geteuid():
            continue
        age = now - st.st_mtime
        pid = int(m.group(1)) if m.group(1) else None
        if pid == os.getpid():
            continue
        stale = age > max_age_s if pid is None else (not _pid_alive(pid) or age > 3600)
        if stale:
            shutil.rmtree(entry.path, ignore_errors=True)
            removed.append(entry.path)
    if removed:
        logger.warning("removed %d sandbox run directories left by a killed trainer in %s", len(removed), tmp)
    return removed


def _read_head(path: str, limit: int) -> tuple[str, bool]:
    with open(path, "rb") as f:
        data = f.read(limit + 1)
    return data[:limit].decode("utf-8", "replace"), len(data) > limit


_SYSTEM_DIRS = ("/usr", "/lib", "/lib32", "/lib64", "/bin", "/sbin", "/etc", "/opt", "/proc", "/sys", "/dev", "/tmp",
                "/var", "/run", "/srv", "/mnt", "/media", "/boot")


def _dirs_to_hide(python: str) -> list[str]:
    """Home directories and the trainer's working directory (data, answers, tokens such as a 0644
    ``~/.cache/huggingface/token``), covered by an empty read-only tmpfs in the mount namespace; system
    directories and anything holding the interpreter stay visible."""
    exe = os.path.realpath(python)
    wanted = {"/root", "/home", os.path.realpath(os.getcwd()), os.path.realpath(os.path.expanduser("~"))}
    hidden: list[str] = []
    for d in sorted(wanted):
        if (d == "/" or not os.path.isdir(d) or exe.startswith(d + "/")
                or any(d == s or d.startswith(s + "/") or s.startswith(d + "/") for s in _SYSTEM_DIRS)
                or any(d.startswith(h + "/") for h in hidden)):
            continue
        hidden.append(d)
    return hidden


def _private_file(path: str):
    return open(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600), "wb")


def _read_pipe(fd: int) -> list[str]:
    os.set_blocking(fd, False)
    chunks = []
    while True:
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        chunks.append(chunk)
    return b"".join(chunks).decode("utf-8", "replace").splitlines()


def _stop(proc: subprocess.Popen, pidns: bool) -> None:
    """Wall-clock kill: SIGUSR1 asks the launcher to SIGKILL the namespace's init (which takes every process
    of the namespace with it); without a pid namespace, or if that fails, SIGKILL the whole process group."""
    if pidns:
        proc.send_signal(signal.SIGUSR1)
        try:
            proc.wait(timeout=2)
            return
        except subprocess.TimeoutExpired:
            pass
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    proc.wait()


def _classify(rc: int | None, stderr: str, sizes: tuple[int, int], *, cpu: int, memory_mb: int,
              max_file_mb: int, max_output_bytes: int) -> tuple[str, str]:
    if rc == -signal.SIGXCPU:
        return "timeout", f"CPU time over {cpu} s"
    if rc == -signal.SIGXFSZ or max(sizes) >= max_file_mb << 20 or "[Errno 27] File too large" in stderr[-2000:]:
        return "output_limit", f"a file or the output reached {max_file_mb} MB"
    if max(sizes) > max_output_bytes:  # a flood, even one whose write errors the code caught before exiting 0
        return "output_limit", f"stdout {sizes[0]} / stderr {sizes[1]} bytes, over {max_output_bytes} read back"
    if rc == 0:
        return "ok", ""
    if rc is not None and rc < 0:
        return "killed", f"signal {-rc}"
    if "MemoryError" in stderr[-2000:]:
        return "memory", f"address space over {memory_mb} MB"
    return "error", ""


def _launch(code: str, setup: _Setup, python: str, *, timeout_s: float, cpu_s: float | None, memory_mb: int,
            max_procs: int, max_file_mb: int, max_output_bytes: int, tmp_mb: int) -> SandboxResult:
    start = time.monotonic()
    netns, pidns = bool(setup.unshare & _CLONE_NEWNET), bool(setup.unshare & _CLONE_NEWPID)
    outer = tempfile.mkdtemp(prefix=f"{_RUN_DIR_PREFIX}{os.getpid()}-")
    out_path, err_path = os.path.join(outer, "stdout"), os.path.join(outer, "stderr")
    read_fd, write_fd = os.pipe()
    uid = None
    try:
        with open(os.path.join(outer, "code.py"), "w", encoding="utf-8") as f:
            f.write(code)
        cpu = int(cpu_s if cpu_s is not None else int(timeout_s) + 1)
        limits = [("RLIMIT_CPU", (cpu, cpu + 1)), ("RLIMIT_AS", (memory_mb << 20,) * 2),
                  ("RLIMIT_NPROC", (max_procs,) * 2), ("RLIMIT_FSIZE", (max_file_mb << 20,) * 2),
                  ("RLIMIT_CORE", (0, 0)), ("RLIMIT_NOFILE", (64, 64))]
        tmpfs = [(p, tmp_mb if p == "/tmp" else 1, 0o755 if p in ("/run", "/var/run") else 0o1777)
                 for p in ("/tmp", "/var/tmp", "/dev/shm", "/run", "/var/run")
                 if os.path.isdir(p) and not os.path.islink(p)]
        mkdirs = ["/run/lock"] if any(p == "/run" for p, _, _ in tmpfs) else []
        with _lease_uid(start + timeout_s + 10) as uid, _private_file(out_path) as out_f, \
                _private_file(err_path) as err_f:
            workdir = "/tmp/work" if setup.private_tmp else os.path.join(outer, "work")
            if not setup.private_tmp:  # the uid must reach workdir by path: outer is searchable, not listable
                os.chmod(outer, 0o711)
                os.mkdir(workdir, 0o700)
            cfg = {"pipe_fd": write_fd, "code_path": os.path.join(outer, "code.py"), "unshare": setup.unshare,
                   "private_tmp": setup.private_tmp, "tmpfs": tmpfs, "mkdirs": mkdirs,
                   "hide": _dirs_to_hide(python), "workdir": workdir, "uid": uid, "seccomp": setup.seccomp,
                   "parent_pid": os.getpid(), "deadline_s": timeout_s + _DEADLINE_GRACE_S,
                   "limits": limits, "python": python, "path": _PATH}
            try:
                proc = subprocess.Popen([sys.executable, "-I", "-S", _LAUNCHER, json.dumps(cfg)],
                                        stdin=subprocess.DEVNULL, stdout=out_f, stderr=err_f, env={}, cwd=outer,
                                        start_new_session=True, pass_fds=(write_fd,))
            finally:
                os.close(write_fd)
                write_fd = -1
            timed_out = False
            try:
                proc.wait(timeout=max(0.0, start + timeout_s - time.monotonic()))
            except subprocess.TimeoutExpired:
                timed_out = True
                _stop(proc, pidns)
            swept = uid is None or _kill_uid(uid)
            if uid is None:
                try:
                    os.killpg(proc.pid, signal.SIGKILL)  # stragglers of the group (no uid to sweep)
                except (ProcessLookupError, PermissionError):
                    pass
        wall = time.monotonic() - start
        messages = _read_pipe(read_fd)
        errors = [m[2:] for m in messages if m.startswith("E:")]
        statuses = [int(m[2:]) for m in messages if m.startswith("S:")]
        rc = os.waitstatus_to_exitcode(statuses[-1]) if statuses else (None if pidns else proc.returncode)
        out, t1 = _read_head(out_path, max_output_bytes)
        err, t2 = _read_head(err_path, max_output_bytes)
        sizes = (os.path.getsize(out_path), os.path.getsize(err_path))

        def result(status: str, detail: str = "") -> SandboxResult:
            return SandboxResult(status, rc, out, err, wall, t1 or t2, netns, uid, detail)

        if errors:
            return result("sandbox_failure", "; ".join(errors))
        if not swept:
            return result("sandbox_failure", f"processes of uid {uid} survive SIGKILL")
        if timed_out:
            return result("timeout", f"wall clock over {timeout_s} s")
        if rc is None:
            return result("sandbox_failure", f"the launcher ended ({proc.returncode}) without a status")
        return result(*_classify(rc, err, sizes, cpu=cpu, memory_mb=memory_mb, max_file_mb=max_file_mb,
                                 max_output_bytes=max_output_bytes))
    except (OSError, TimeoutError) as e:
        return SandboxResult("sandbox_failure", None, "", "", time.monotonic() - start, False, netns, uid,
                             f"{type(e).__name__}: {e}")
    finally:
        if write_fd >= 0:
            os.close(write_fd)
        os.close(read_fd)
        shutil.rmtree(outer, ignore_errors=True)


def _python_candidates() -> list[str]:
    found = [os.path.realpath(getattr(sys, "_base_executable", "") or sys.executable), os.path.realpath(sys.executable)]
    found += [p for p in ("/usr/local/bin/python3", "/usr/bin/python3") if os.path.exists(p)]
    return list(dict.fromkeys(found))


def _probe() -> _Setup:
    """Find the strongest isolation that works here and an interpreter the sandbox user can start."""
    if _is_root():
        levels = [(_CLONE_NEWNET | _CLONE_NEWNS | _CLONE_NEWPID, True), (_CLONE_NEWNET, False), (0, False)]
    else:
        levels = [(_CLONE_NEWUSER | _CLONE_NEWNET, False), (0, False)]
    levels = [(flags, private_tmp, seccomp) for flags, private_tmp in levels for seccomp in (True, False)]
    problems = []
    for flags, private_tmp, seccomp in levels:
        for python in _python_candidates():
            setup = _Setup(python, flags, private_tmp, separate_uid=_is_root(), seccomp=seccomp)
            r = _launch("print('sandbox-ok')", setup, python, timeout_s=10, cpu_s=5, memory_mb=512, max_procs=8,
                        max_file_mb=1, max_output_bytes=4096, tmp_mb=1)
            if r.ok and r.stdout.strip() == "sandbox-ok":
                if python != _python_candidates()[0]:
                    logger.warning("sandboxed code runs on %s: the sandbox uid cannot run this interpreter (%s)",
                                   python, _python_candidates()[0])
                if setup.weaknesses():
                    logger.warning("sandbox isolation is degraded: %s (%s)", "; ".join(setup.weaknesses()),
                                   "; ".join(problems) or "not root")
                return setup
            problems.append(f"{python} flags={flags:#x}: {r.status} {r.detail or r.stderr[-300:]}")
    logger.error("sandbox unavailable: %s", "; ".join(problems))
    return _Setup(None, 0, False, "; ".join(problems))


def sandbox_setup() -> _Setup:
    """The probed isolation level (probed on first use, then cached for the process)."""
    global _SETUP
    with _SETUP_LOCK:
        if _SETUP is None:
            sweep_stale_run_dirs()
            _SETUP = _probe()
        return _SETUP


def run_in_sandbox(code: str, *, timeout_s: float = 5.0, cpu_s: float | None = None, memory_mb: int = 512,
                   max_procs: int = 32, max_file_mb: int = 16, max_output_bytes: int = 65536, tmp_mb: int = 64,
                   python: str | None = None) -> SandboxResult:
    """Run Python source ``code`` in the sandbox and return what happened (never raises for the code's sake).

    ``timeout_s`` is the wall clock for the whole run; ``cpu_s`` defaults to ``timeout_s + 1``; ``memory_mb`` caps
    the address space; ``max_procs`` the processes and threads of the sandbox uid; ``max_file_mb`` any file
    written, stdout and stderr included; ``tmp_mb`` the private /tmp. ``python`` overrides the interpreter
    (default: the probed one, the trainer's own where the sandbox user can reach it).

    >>> r = run_in_sandbox("print(6 * 7)")
    >>> r.status, r.stdout
    ('ok', '42\\n')
    """
    setup = sandbox_setup()
    python = python or setup.python
    if python is None:
        return SandboxResult("sandbox_failure", None, "", "", 0.0, detail=f"no usable sandbox: {setup.problem}")
    return _launch(code, setup, python, timeout_s=timeout_s, cpu_s=cpu_s, memory_mb=memory_mb,
                   max_procs=max_procs, max_file_mb=max_file_mb, max_output_bytes=max_output_bytes, tmp_mb=tmp_mb)


def run_many(codes: Sequence[str], *, workers: int | None = None, **limits: object) -> list[SandboxResult]:
    """``run_in_sandbox`` over ``codes`` with ``workers`` concurrent runs (threads waiting on processes), in order.

    >>> [r.stdout for r in run_many(["print(1)", "print(2)"], workers=2)]
    ['1\\n', '2\\n']
    """
    workers = max(1, min(len(codes), workers or os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda c: run_in_sandbox(c, **limits), codes))
