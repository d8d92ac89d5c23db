"""The sandbox holds against the threats docs/design.md names ("The sandbox's threat model"): each test
runs one attack and checks the damage.

Timeouts are short (1-2 s) and memory caps small to keep the file under ~10 s on 2 cores.
"""

from __future__ import annotations

import os
import resource
import socket
import sys
import time
from pathlib import Path

import pytest

from alignkit.rewards.sandbox import processes_of_uid, run_in_sandbox, run_many, sandbox_setup

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")
ROOT = os.geteuid() == 0 if hasattr(os, "geteuid") else False
needs_root = pytest.mark.skipif(not ROOT, reason="uid separation needs root (the sandbox runs code as another uid)")


@pytest.fixture(scope="module", autouse=True)
def usable_sandbox():
    setup = sandbox_setup()
    assert setup.python is not None, f"no usable sandbox here: {setup.problem}"
    return setup


def test_plain_code_runs():
    r = run_in_sandbox("import math\nprint(math.factorial(5))", timeout_s=5)
    assert (r.status, r.returncode, r.stdout) == ("ok", 0, "120\n")
    assert not r.truncated and r.wall_s < 5


def test_nonzero_exit_is_an_error_not_a_sandbox_failure():
    # 127 is what the launcher uses for its own failures: the code cannot fake one (the pipe says so)
    r = run_in_sandbox("import sys\nsys.exit(127)")
    assert (r.status, r.returncode) == ("error", 127)
    r = run_in_sandbox("def f(:\n    pass")
    assert r.status == "error" and "SyntaxError" in r.stderr


def test_unstartable_interpreter_is_a_sandbox_failure():
    r = run_in_sandbox("print(1)", python="/nonexistent/python3")
    assert r.status == "sandbox_failure"
    assert "nonexistent" in r.detail or "FileNotFoundError" in r.detail


def test_infinite_loop_is_killed_at_the_wall_clock():
    start = time.monotonic()
    r = run_in_sandbox("while True:\n    pass", timeout_s=1)
    assert r.status == "timeout"
    assert time.monotonic() - start < 3
    if r.uid is not None:
        assert processes_of_uid(r.uid) == []


def test_cpu_limit_ends_a_busy_loop_before_the_wall_clock():
    r = run_in_sandbox("while True:\n    pass", timeout_s=10, cpu_s=1)  # ~1 s; more only on a loaded machine
    assert r.status == "timeout" and "CPU" in r.detail


@needs_root
def test_fork_bomb_is_contained_and_leaves_no_process():
    bomb = (
        "import os\n"
        "while True:\n"
        "    try:\n"
        "        if os.fork() == 0:\n"
        "            os.setsid()  # try to leave the process group\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = run_in_sandbox(bomb, timeout_s=1.5, max_procs=8)
    assert r.status == "timeout"
    assert r.uid is not None and processes_of_uid(r.uid) == []


@needs_root
def test_daemon_that_outlives_the_main_process_is_killed():
    daemon = (
        "import os, time\n"
        "if os.fork() == 0:\n"
        "    os.setsid()\n"
        "    if os.fork() == 0:\n"
        "        time.sleep(60)\n"
        "    os._exit(0)\n"
        "print('main done')\n"
    )
    r = run_in_sandbox(daemon, timeout_s=5)
    assert (r.status, r.stdout) == ("ok", "main done\n")
    assert processes_of_uid(r.uid) == []


def test_memory_bomb_hits_the_memory_limit():
    r = run_in_sandbox("chunks = []\nwhile True:\n    chunks.append(bytearray(10_000_000))", memory_mb=128, timeout_s=5)
    assert r.status == "memory", (r.status, r.stderr[-300:])


@needs_root
def test_writing_outside_its_directory_fails(tmp_path):
    target_dir = tmp_path / "owned_by_root"
    target_dir.mkdir(mode=0o755)
    repo_file = Path(__file__).resolve().parents[2] / "sandbox_was_here.txt"
    scratch = Path(f"/tmp/alignkit-sandbox-scratch-{os.getpid()}.txt")
    code = (
        "import os\n"
        f"for path in [{str(target_dir / 'pwned.txt')!r}, {str(repo_file)!r}, '/root/pwned.txt']:\n"
        "    try:\n"
        "        open(path, 'w').write('x')\n"
        "        print('WROTE', path)\n"
        "    except OSError as e:\n"
        "        print('DENIED', path, type(e).__name__)\n"
        f"open({str(scratch)!r}, 'w').write('ok')  # its own /tmp works\n"
        "open('here.txt', 'w').write('ok')  # and so does its working directory\n"
    )
    r = run_in_sandbox(code)
    assert r.status == "ok", r.stderr
    assert "WROTE" not in r.stdout and r.stdout.count("DENIED") == 3
    assert not (target_dir / "pwned.txt").exists() and not repo_file.exists()
    if sandbox_setup().private_tmp:
        assert not scratch.exists()  # that /tmp was a private tmpfs, gone with the run


@needs_root
def test_parent_environment_is_invisible(monkeypatch):
    monkeypatch.setenv("ALIGNKIT_TEST_SECRET", "hunter2-do-not-leak")
    code = (
        "import os\n"
        "print(sorted(os.environ))\n"
        f"for pid in (os.getppid(), {os.getpid()}):\n"
        "    try:\n"
        "        print(open(f'/proc/{pid}/environ', 'rb').read())\n"
        "    except OSError as e:\n"
        "        print('DENIED', type(e).__name__)\n"
    )
    r = run_in_sandbox(code)
    assert r.status == "ok", r.stderr
    assert "hunter2" not in r.stdout + r.stderr
    assert r.stdout.splitlines()[0] in ("['PATH']", "['LC_CTYPE', 'PATH']")  # LC_CTYPE: Python's C-locale coercion
    assert r.stdout.count("DENIED") == 2


def test_network_connection_fails_even_to_the_parents_loopback():
    if not sandbox_setup().unshare & 0x40000000:
        pytest.skip("no network namespace here (unshare(CLONE_NEWNET) not permitted): network is not isolated")
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen(1)
        port = listener.getsockname()[1]
        code = (
            "import socket\n"
            "try:\n"
            f"    socket.create_connection(('127.0.0.1', {port}), timeout=1)\n"
            "    print('CONNECTED')\n"
            "except OSError as e:\n"
            "    print('FAILED', e)\n"
        )
        r = run_in_sandbox(code)
        listener.settimeout(0.2)
        with pytest.raises(TimeoutError):
            listener.accept()
    assert r.network_isolated and r.status == "ok"
    assert r.stdout.startswith("FAILED")


def test_huge_output_is_capped_and_truncated():
    rss_before = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # KiB on Linux
    r = run_in_sandbox("while True:\n    print('x' * 10000)", max_file_mb=1, max_output_bytes=1000, timeout_s=5)
    assert r.status == "output_limit" and r.truncated
    assert len(r.stdout) == 1000 and set(r.stdout) == {"x"}
    # more than is read back is a limit hit, not "ok": a caller reading results from stdout must not take a
    # truncated head for the whole (changed in issue 16; it used to be "ok" with truncated=True)
    r = run_in_sandbox("import sys\nsys.stdout.write('y' * 5000)", max_output_bytes=1000)
    assert (r.status, r.truncated, len(r.stdout)) == ("output_limit", True, 1000)
    assert resource.getrusage(resource.RUSAGE_SELF).ru_maxrss - rss_before < 50_000  # read capped, not slurped


@needs_root
def test_killing_its_parent_fails_and_the_test_survives():
    code = (
        "import os\n"
        f"for pid in (os.getppid(), {os.getpid()}, 1):\n"
        "    try:\n"
        "        os.kill(pid, 9)\n"
        "        print('KILLED', pid)\n"
        "    except OSError as e:\n"
        "        print('REFUSED', type(e).__name__)\n"
    )
    r = run_in_sandbox(code)
    assert r.status == "ok", r.stderr
    assert "KILLED" not in r.stdout and r.stdout.count("REFUSED") == 3
    os.kill(os.getpid(), 0)  # still here


def test_run_many_runs_in_parallel_and_keeps_order():
    codes = [f"import time\ntime.sleep(0.5)\nprint({i})" for i in range(4)]
    start = time.monotonic()
    results = run_many(codes, workers=4, timeout_s=5)
    assert [r.stdout for r in results] == ["0\n", "1\n", "2\n", "3\n"]
    assert time.monotonic() - start < 1.9  # 4 x 0.5 s sequential would be 2 s or more
    if ROOT:
        assert len({r.uid for r in results}) == 4  # one uid per concurrent run


# ---------------------------------------------------------------- issue 16: sandbox edges


def test_a_flood_whose_write_errors_are_caught_is_still_an_output_limit():
    code = (
        "import os\n"
        "for _ in range(10000):\n"
        "    try:\n"
        "        os.write(1, b'x' * 65536)\n"
        "    except OSError:\n"
        "        pass\n"
    )
    r = run_in_sandbox(code, max_file_mb=1, max_output_bytes=1000)
    assert (r.returncode, r.status, r.truncated) == (0, "output_limit", True)


@needs_root
def test_unix_sockets_under_run_are_out_of_reach():
    if not sandbox_setup().private_tmp:
        pytest.skip("no mount namespace here: /run is shared")
    path = f"/run/alignkit-test-{os.getpid()}.sock"
    with socket.socket(socket.AF_UNIX) as listener:
        listener.bind(path)
        os.chmod(path, 0o777)  # connectable by anyone on the host
        listener.listen(1)
        try:
            code = (
                "import socket, os\n"
                f"for p in ({path!r}, {path.replace('/run/', '/var/run/')!r}):\n"
                "    try:\n"
                "        socket.socket(socket.AF_UNIX).connect(p)\n"
                "        print('CONNECTED')\n"
                "    except OSError as e:\n"
                "        print('FAILED', type(e).__name__)\n"
                "print(sorted(os.listdir('/run')))\n"
            )
            r = run_in_sandbox(code)
        finally:
            os.unlink(path)
    assert r.status == "ok", r.stderr
    assert "CONNECTED" not in r.stdout and r.stdout.count("FAILED") == 2
    assert r.stdout.splitlines()[-1] == "['lock']"


def test_the_code_cannot_create_namespaces():
    if not sandbox_setup().seccomp:
        pytest.skip("no seccomp here: the code can create user namespaces (documented)")
    code = (
        "import ctypes, os\n"
        "libc = ctypes.CDLL(None, use_errno=True)\n"
        "for flags in (0x10000000, 0x40000000, 0x20000):  # user, net, mount\n"
        "    print('unshare', libc.unshare(flags), ctypes.get_errno())\n"
        "pid = libc.syscall(56, 0x10000000 | 17, 0, 0, 0, 0)  # raw clone(CLONE_NEWUSER | SIGCHLD), x86_64\n"
        "if pid == 0:\n"
        "    os._exit(0)\n"
        "print('clone', pid, ctypes.get_errno())\n"
        "print('fork', os.fork() >= 0 and os.wait() is not None)  # plain fork still works\n"
    )
    r = run_in_sandbox(code)
    assert r.status == "ok", r.stderr
    lines = r.stdout.splitlines()
    assert lines[:3] == ["unshare -1 1"] * 3  # EPERM
    if os.uname().machine == "x86_64":
        assert lines[3] == "clone -1 1"
    assert lines[-1] == "fork True"


def _code_processes(cpu_s: int) -> list[int]:
    """Processes whose CPU limit is ``cpu_s`` (a value only the test's run uses): found across uids and pid
    namespaces through /proc/<pid>/limits."""
    found = []
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            try:
                with open(f"/proc/{entry.name}/limits") as f:
                    if any(line.startswith("Max cpu time") and line.split()[3] == str(cpu_s) for line in f):
                        found.append(int(entry.name))
            except OSError:
                pass
    return found


def _start_trainer(timeout_s: float, cpu_s: int):
    import subprocess
    script = ("from alignkit.rewards.sandbox import run_in_sandbox\n"
              f"run_in_sandbox('import time\\ntime.sleep(60)', timeout_s={timeout_s}, cpu_s={cpu_s})\n")
    trainer = subprocess.Popen([sys.executable, "-c", script])
    deadline = time.monotonic() + 15
    while not _code_processes(cpu_s):
        assert time.monotonic() < deadline, "the sandboxed code never started"
        assert trainer.poll() is None
        time.sleep(0.05)
    return trainer


def _wait_gone(cpu_s: int, within_s: float) -> float:
    start = time.monotonic()
    while _code_processes(cpu_s):
        assert time.monotonic() - start < within_s, "the sandboxed code outlived its limits"
        time.sleep(0.05)
    return time.monotonic() - start


@needs_root
def test_killing_the_trainer_mid_run_ends_the_code():
    cpu_s = 900 + os.getpid() % 97
    trainer = _start_trainer(60, cpu_s)
    trainer.kill()
    trainer.wait()
    _wait_gone(cpu_s, within_s=3)  # parent-death signals: launcher, then init and the namespace


@needs_root
def test_the_launcher_enforces_its_own_deadline_when_the_trainer_cannot():
    import signal
    cpu_s = 800 + os.getpid() % 97
    trainer = _start_trainer(1, cpu_s)
    trainer.send_signal(signal.SIGSTOP)  # alive but frozen: its wall clock never fires
    try:
        _wait_gone(cpu_s, within_s=8)  # timeout_s + the launcher's grace (3 s) + start-up
    finally:
        trainer.kill()
        trainer.wait()


def test_stale_run_directories_are_swept(tmp_path):
    import subprocess

    from alignkit.rewards.sandbox import sweep_stale_run_dirs
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()  # a pid that no longer runs (reuse within the test is vanishingly unlikely)
    dead_dir = tmp_path / f"alignkit-sandbox-{dead.pid}-abcd1234"
    live_dir = tmp_path / f"alignkit-sandbox-{os.getppid()}-abcd1234"
    old_unnamed, new_unnamed = tmp_path / "alignkit-sandbox-zzzz9999", tmp_path / "alignkit-sandbox-yyyy8888"
    locks = tmp_path / "alignkit-sandbox-uids"
    for d in (dead_dir, live_dir, old_unnamed, new_unnamed, locks):
        d.mkdir()
        (d / "stdout").write_text("x")
    os.utime(old_unnamed, (time.time() - 3600, time.time() - 3600))
    os.utime(locks, (time.time() - 3600, time.time() - 3600))
    removed = sweep_stale_run_dirs(str(tmp_path), max_age_s=300)
    assert sorted(removed) == sorted([str(dead_dir), str(old_unnamed)])
    assert live_dir.exists() and new_unnamed.exists() and locks.exists()
