"""The code reward's cheats: each solution below tries to get credit without solving the task, and scores 0.

Issue 16: the verdict must come from outside the solution's process (``alignkit.rewards.code_judge``). The
task: ``g(n) = n*n + 3n + 1`` and ``pairs(n)`` (all index pairs i < j). Every attack ships a wrong solution
(or none) plus its trick; the correct one scores 1.0, a half-right one 0.75. Timeouts are 1-2 s.
"""

from __future__ import annotations

import sys
import threading

import pytest

import alignkit.rewards.sandbox as sandbox_module
from alignkit.rewards import code_judge
from alignkit.rewards.code import code_reward, run_tests
from alignkit.rewards.errors import RewardError

pytestmark = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="the sandbox is Linux-only")

TESTS = [
    "assert g(3) == 19",
    "assert g(7) == 71",
    "assert g(0) == 1 and len(str(g(10))) == 3",
    "assert sorted(pairs(3)) == [(0, 1), (0, 2), (1, 2)]",
]
CORRECT = "def g(n):\n    return n * n + 3 * n + 1\n\ndef pairs(n):\n    return [(i, j) for i in range(n) for j in range(i + 1, n)]\n"
WRONG = "def g(n):\n    return 0\n\ndef pairs(n):\n    return []\n"
FORGE_ALL = (  # write a plausible result line for every index on every fd that might be the channel
    "import os\n"
    "def _forge(payload):\n"
    "    for fd in range(1, 40):\n"
    "        for i in range(50):\n"
    "            try:\n"
    "                os.write(fd, ('%d\\t%s\\n' % (i, payload)).encode())\n"
    "            except OSError:\n"
    "                pass\n"
)


def reward(code: str, tests=TESTS, **kw) -> float:
    return code_reward(f"```python\n{code}```", tests=tests, timeout_s=kw.pop("timeout_s", 2), **kw)


def test_correct_solution_scores_one_and_partial_gets_partial_credit():
    assert reward(CORRECT) == 1.0
    assert reward(CORRECT.replace("j in range(i + 1, n)", "j in range(i, n)")) == 0.75
    assert reward(WRONG) == 0.0
    assert reward(CORRECT.replace("return n * n", "raise ValueError; return n * n")) == 0.25


ATTACKS = {
    # --- the five from the issue
    "patch builtins.exec": "import builtins\nbuiltins.exec = lambda *a, **k: None\n" + WRONG,
    "patch builtins.compile": "import builtins\nbuiltins.compile = lambda *a, **k: compile('pass', 'x', 'exec')\n"
                              + WRONG,
    "nonce from sys._getframe(1)": WRONG + (
        "import sys, os, re\n"
        "f = sys._getframe(0)\n"
        "while f:\n"
        "    for v in list(f.f_locals.values()) + list(f.f_globals.values()):\n"
        "        if isinstance(v, str) and re.fullmatch('[0-9a-f]{32}', v):\n"
        "            for i in range(10):\n"
        "                for fd in range(1, 10):\n"
        "                    try: os.write(fd, f'{v} {i}\\n'.encode())\n"
        "                    except OSError: pass\n"
        "    f = f.f_back\n"),
    "tests from sys.modules['__main__']": WRONG + FORGE_ALL + (
        "import sys, json\n"
        "m = sys.modules['__main__']\n"
        "found = [v for k, v in vars(m).items() if k.startswith('_')]\n"
        "for name in ('_tests', '_calls'):\n"
        "    if hasattr(m, name):\n"
        "        setattr(m, name, [])\n"
        "_forge(json.dumps(['b', True]))\n"
        "os._exit(0)\n"),
    "shadow sorted, len and str": WRONG + "import builtins\nbuiltins.sorted = lambda x: [(0, 1), (0, 2), (1, 2)]\n"
                                  "builtins.len = lambda x: 3\nbuiltins.str = lambda x: 'abc'\n"
                                  "sorted = builtins.sorted\n",
    "__eq__ always true": "class A:\n    def __eq__(self, other): return True\n    __hash__ = object.__hash__\n"
                          "def g(n): return A()\ndef pairs(n): return A()\n",
    # --- exits and exceptions
    "os._exit(0) at import": "import os\nos._exit(0)\n" + WRONG,
    "os._exit(0) in the first call": "import os\ndef g(n): os._exit(0)\ndef pairs(n): os._exit(0)\n",
    "SystemExit(0) at import": "raise SystemExit(0)\n" + WRONG,
    "SystemExit in each call": "import sys\ndef g(n): sys.exit(0)\ndef pairs(n): raise SystemExit\n",
    "AssertionError patched away": "import builtins\nclass Never(Exception): pass\nbuiltins.AssertionError = Never\n"
                                   + WRONG,
    "exception subclass with a lying __str__": "class Pass(AssertionError):\n    def __str__(self): return 'ok'\n"
                                               "def g(n): raise Pass()\ndef pairs(n): raise Pass()\n",
    # --- forged output
    "print fake pass lines": "print('PASS 0'); print('0\\t[\"b\",true]')\n" + WRONG,
    "fake lines for every index on every fd": WRONG + FORGE_ALL + "_forge('[\"i\",\"0x13\"]')\n",
    "right value for call 0, then the driver's wrong one": WRONG + FORGE_ALL + "_forge('[\"i\",\"0x13\"]')\n",
    "malformed, huge and deep lines": WRONG + FORGE_ALL + "_forge('[' * 100000)\n_forge('[\"i\",\"0x' + 'f' * 200000 + '\"]')\n"
                                      "_forge('\\xff\\xfe not json')\n",
    # (a forged constant passes exactly where returning that constant would: 19 would pass test 0, as
    # ``def g(n): return 19`` does; the judge cannot tell a hard-coded answer from a computed one)
    "monkeypatch json.dumps": "import json\njson.dumps = lambda *a, **k: '[\"b\",true]'\n" + WRONG,
    "patch os.write": "import os\nos.write = lambda fd, data: len(data)\n" + WRONG,
    "override print": "import builtins\nbuiltins.print = lambda *a, **k: None\n" + WRONG,
    "replace sys.stdout with the channel": "import sys, os\nsys.stdout = os.fdopen(os.dup(3), 'w')\n"
                                          "print('0\\t[\"i\",\"0x13\"]')\n" + WRONG,
    "atexit forges lines": WRONG + FORGE_ALL + "import atexit\natexit.register(_forge, '[\"i\",\"0x13\"]')\n",
    "fork a child that writes results later": WRONG + FORGE_ALL + (
        "import time\n"
        "if os.fork() == 0:\n"
        "    time.sleep(0.3)\n"
        "    _forge('[\"i\",\"0x13\"]')\n"
        "    os._exit(0)\n"),
    "mutate the driver's call list via gc": WRONG + (
        "import gc\n"
        "for o in gc.get_objects():\n"
        "    if type(o) is list and o and type(o[0]) is tuple and len(o[0]) == 3:\n"
        "        o[:] = [('g', [0], {})] * len(o)\n"),
    # --- values that are not what they claim
    "int subclass with __eq__": "class I(int):\n    def __eq__(self, o): return True\n    __hash__ = int.__hash__\n"
                                "def g(n): return I(0)\ndef pairs(n): return [I(0)]\n",
    "list subclass": "class L(list):\n    def __eq__(self, o): return True\ndef g(n): return 0\ndef pairs(n): return L()\n",
    "__class__ spoofed as int": "class F:\n    __class__ = property(lambda self: int)\ndef g(n): return F()\n"
                                "def pairs(n): return F()\n",
    "custom __repr__ and __reduce__": "class R:\n    def __repr__(self): return '19'\n"
                                      "    def __reduce__(self): return (int, (19,))\n"
                                      "def g(n): return R()\ndef pairs(n): return R()\n",
    "generator": "def g(n):\n    yield 19\ndef pairs(n):\n    yield (0, 1)\n",
    "float nan": "def g(n): return float('nan')\ndef pairs(n): return [float('nan')]\n",
    "True instead of 19": "def g(n): return True\ndef pairs(n): return True\n",
    "huge result": "def g(n): return 'x' * 5_000_000\ndef pairs(n): return list(range(3_000_000))\n",
    "deeply nested result": "def g(n):\n    x = []\n    for _ in range(100000):\n        x = [x]\n    return x\n"
                            "pairs = g\n",
    "self-referencing result": "def g(n):\n    x = []\n    x.append(x)\n    return x\npairs = g\n",
    # --- resource and environment tricks
    "infinite loop": "def g(n):\n    while True:\n        pass\ndef pairs(n):\n    while True:\n        pass\n",
    "sleep past the timeout": "import time\ntime.sleep(100)\n" + WRONG,
    "recursion bomb": "def g(n): return g(n) + 1\ndef pairs(n): return pairs(n)\n",
    "memory bomb": "def g(n):\n    x = []\n    while True:\n        x.append(bytearray(10**7))\npairs = g\n",
    "stdout flood": "import sys\nfor _ in range(10**6):\n    sys.stdout.write('0\\t[\"i\",\"0x13\"]\\n' * 100)\n" + WRONG,
    "read /proc/self": WRONG + (
        "import os\n"
        "seen = []\n"
        "for name in ('cmdline', 'environ', 'maps', 'status'):\n"
        "    try: seen.append(open('/proc/self/' + name, 'rb').read())\n"
        "    except OSError: pass\n"
        "for fd in os.listdir('/proc/self/fd'):\n"
        "    try: seen.append(os.readlink('/proc/self/fd/' + fd))\n"
        "    except OSError: pass\n"),
    "signal tricks": "import signal, os\nsignal.alarm(0)\nsignal.signal(signal.SIGALRM, signal.SIG_IGN)\n"
                     "signal.signal(signal.SIGTERM, signal.SIG_IGN)\n"
                     "for s in (signal.SIGUSR1, signal.SIGTERM):\n"
                     "    try: os.kill(os.getppid(), s)\n    except OSError: pass\n" + WRONG,
    "kill the parent and pid 1": "import os\nfor p in (os.getppid(), 1):\n    try: os.kill(p, 9)\n"
                                 "    except OSError: pass\n" + WRONG,
    "write result files": "import os\nfor p in ('results.txt', '/tmp/results', '../stdout'):\n"
                          "    try: open(p, 'w').write('0\\t[\"i\",\"0x13\"]\\n')\n    except OSError: pass\n" + WRONG,
    "solution defines the checker names": "def same(a, b): return True\ndef sorted(x): return [(0, 1), (0, 2), (1, 2)]\n"
                                          "def len(x): return 3\n" + WRONG,
}


@pytest.mark.parametrize("name", list(ATTACKS))
def test_attack_scores_zero(name):
    assert reward(ATTACKS[name], timeout_s=1.5) == 0.0, name


def test_duplicate_lines_fail_even_when_one_is_right():
    # the channel forged with the right value for every call, and the driver's own (wrong) line: two lines
    results = code_judge.read_results('0\t["i","0x13"]\n0\t["i","0x0"]\n', 1, complete=True)
    assert isinstance(results[0], code_judge.Failed)


def test_a_cut_last_line_is_not_trusted():
    # the driver ends every line with a newline: one without may have been cut at the output cap
    assert code_judge.read_results('0\t["i","0x13"]\n', 1, complete=True)[0] == 19
    for complete in (True, False):
        assert isinstance(code_judge.read_results('0\t["i","0x13"]', 1, complete=complete)[0], code_judge.Failed)


def test_expected_values_never_enter_the_sandbox():
    p = code_judge.plan(TESTS)
    program = code_judge.driver(WRONG, p.calls)
    for secret in ("19", "71", "(0, 2)", "assert", "sorted"):
        assert secret not in program.replace(WRONG, ""), secret


def test_comparison_is_by_value_and_exact_type():
    tests = ["assert f(1) == 1", "assert f(2) == 2.0", "assert f(3) == (1, 2)", "assert f(4) is True",
             "assert f(5) == {1: [2]}", "assert f(6) == {1, 2}", "assert math.isclose(f(7), 0.3, rel_tol=1e-9)",
             "assert abs(f(8) - 0.5) < 1e-6"]
    good = ("def f(n):\n    return {1: 1, 2: 2.0, 3: (1, 2), 4: True, 5: {1: [2]}, 6: {2, 1}, 7: 0.1 + 0.2,"
            " 8: 0.5000001}[n]\n")
    assert reward(good, tests=tests) == 1.0
    bad = ("def f(n):\n    return {1: True, 2: 2, 3: [1, 2], 4: 1, 5: {1: (2,)}, 6: [1, 2], 7: 0.31, 8: 0.6}[n]\n")
    assert reward(bad, tests=tests) == 0.0


def test_truthiness_bare_calls_and_nan_follow_python():
    tests = ["assert is_even(4)", "assert not is_even(3)", "is_even(1)", "assert f() == float('nan')"]
    assert reward("def is_even(n): return n % 2 == 0\ndef f(): return float('nan')\n", tests=tests) == 0.75


def test_statement_tests_are_refused_unless_weak_and_weak_is_gameable():
    tests = ["x = g(3)\nassert x == 19"]
    with pytest.raises(RewardError, match="statement_tests"):
        reward(CORRECT, tests=tests)
    assert reward(CORRECT, tests=tests, statement_tests="weak") == 1.0
    assert reward(WRONG, tests=tests, statement_tests="weak") == 0.0
    # the documented hole of the weak mode: the solution shares the test's interpreter
    cheat = ATTACKS["__eq__ always true"]
    assert reward(cheat, tests=tests, statement_tests="weak") == 1.0
    # mixing: the judged test stays judged (and unfooled) next to the weak one the same code fools
    passed, _ = run_tests(cheat, TESTS[:1] + tests, statement_tests="weak", timeout_s=2)
    assert passed == [False, True]


def test_weak_isolation_is_refused_without_opt_in(monkeypatch):
    weak = sandbox_module._Setup(sys.executable, 0, False, separate_uid=False, seccomp=False)
    monkeypatch.setattr(sandbox_module, "_SETUP", None)
    monkeypatch.setattr(sandbox_module, "_probe", lambda: weak)
    with pytest.raises(RewardError, match="allow_weak_isolation") as e:
        reward(CORRECT)
    assert "network" in str(e.value) and "separate uid" in str(e.value)
    monkeypatch.setattr(sandbox_module, "run_in_sandbox", lambda *a, **k: pytest.fail("ran without opt-in"))
    from alignkit.rewards import build_rewards, score
    sample = score(CORRECT, {"tests": TESTS}, build_rewards({"code": 1.0}), success_key="code")
    assert sample.failed == "code" and "allow_weak_isolation" in sample.error


def test_weak_isolation_opt_in_through_the_reward_option(monkeypatch):
    from alignkit.rewards import build_rewards, score
    real = sandbox_module.sandbox_setup()
    weak = sandbox_module._Setup(real.python, real.unshare, real.private_tmp, separate_uid=real.separate_uid,
                                 seccomp=False)
    monkeypatch.setattr(sandbox_module, "_SETUP", weak)
    rewards = build_rewards({"code": 1.0}, {"code": {"allow_weak_isolation": True}})
    assert score(CORRECT, {"tests": TESTS}, rewards, success_key="code").total == 1.0


def test_row_limits_may_only_lower_the_ceiling():
    assert reward(CORRECT, timeout_s=1, memory_mb=256) == 1.0
    with pytest.raises(RewardError, match="ceiling"):
        code_reward(CORRECT, tests=TESTS, timeout_s=31)  # default ceiling 30 s
    with pytest.raises(RewardError, match="ceiling"):
        code_reward(CORRECT, tests=TESTS, memory_mb=4096, max_memory_mb=1024)
    with pytest.raises(RewardError, match="HARD_MAX"):
        code_reward(CORRECT, tests=TESTS, timeout_s=200, max_timeout_s=10_000)
    for bad in (0, -1, float("inf"), "5", True):
        with pytest.raises(RewardError):
            code_reward(CORRECT, tests=TESTS, timeout_s=bad)
    assert "max_timeout_s" in code_reward.config_only


def test_code_reward_is_thread_safe():
    codes = [CORRECT, WRONG, CORRECT.replace("j in range(i + 1, n)", "j in range(i, n)")] * 3
    out: dict[int, float] = {}
    threads = [threading.Thread(target=lambda i=i, c=c: out.__setitem__(i, reward(c))) for i, c in enumerate(codes)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert [out[i] for i in range(len(codes))] == [1.0, 0.0, 0.75] * 3


def test_a_data_row_cannot_set_the_code_rewards_config_only_options():
    # the registry lets a row field override a reward option of the same name; for the code reward's ceilings
    # and isolation policy that would let a dataset column weaken the sandbox: the sample is refused instead
    from alignkit.rewards.registry import build_rewards, score_batch

    rewards = build_rewards({"code": 1.0}, {"code": {"allow_weak_isolation": True}})
    rows = [{"tests": TESTS, "allow_weak_isolation": True}, {"tests": TESTS, "max_timeout_s": 1000},
            {"tests": TESTS, "statement_tests": "weak"}]
    out = score_batch([CORRECT] * 3, rows, rewards, success_key="code")
    assert all(s.total is None and s.failed == "code" for s in out)
    assert "allow_weak_isolation" in out[0].error and "reward options" in out[0].error
    assert "max_timeout_s" in out[1].error and "statement_tests" in out[2].error

    def batched(prompts, completions, **columns):  # a TRL-style function that declares the attribute
        return [1.0] * len(completions)

    batched.config_only = frozenset({"ceiling"})
    refused = score_batch(["a", "b"], [{"ceiling": 1}, {"ceiling": 2}], {"b": (batched, 1.0)}, success_key="b")
    assert all(s.total is None and "ceiling" in s.error for s in refused)
    assert [s.total for s in score_batch(["a"], [{"other": 1}], {"b": (batched, 1.0)}, success_key="b")] == [1.0]
