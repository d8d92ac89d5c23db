"""The sandbox holds against the threats DESIGN.md names: each test runs one attack and checks the damage.

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
