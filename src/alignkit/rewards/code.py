"""Code-execution reward (lecture GRPO-08): the share of test cases that model-written code passes.

The policy is optimized against this reward, so it is built to be ungameable where it can be and explicit
where it cannot (threat model: docs/sandbox.md). The verdict never comes from the solution's process:

- **Judged tests** (the default; ``alignkit.rewards.code_judge``): a test made of asserts over calls of the
  solution's functions with solution-free arguments (``assert f(3) == [1, 2]``, ``assert sorted(f("ab")) ==
  ["a", "b"]``, ``assert math.isclose(f(2), 1.41, rel_tol=1e-3)``, MBPP/HumanEval style) is split into the
  calls, which a sandbox run performs after running the solution (as module ``solution``: an ``if __name__ ==
  "__main__":`` demo does not run; stdin is empty), and the check, which the trainer evaluates on the
  returned values. Expected values never enter the sandbox; results come back as tagged plain values (no
  object of the solution's crosses); they are compared by value and exact type (``True`` is not ``1``, ``2``
  is not ``2.0``, floats exactly unless the test says ``math.isclose``/``abs(..) < eps``). Patching
  ``builtins``, reading the driver's frames or ``__main__``, shadowing ``sorted``, an always-equal
  ``__eq__``, printing fake result lines, ``os._exit(0)``: none can make a call pass that the returned value
  does not pass.
- **Statement tests** (anything else: loops, helper variables, ``assert isinstance(f(1), int)``): these need
  the solution's objects in the test's own interpreter, where the solution can forge any verdict (patch
  ``AssertionError``, exit 0, read a nonce from the harness). They are refused (``RewardError``, the sample
  is left out of the loss) unless ``statement_tests="weak"``: then they run, in a separate sandbox run from
  the judged tests, in a harness that reports passes on a private copy of stdout with a nonce; that verdict
  is gameable by code that introspects the harness. Rewrite such tests as judged asserts where you can.

Outcomes: the solution does not compile or raises at import -> every test fails -> 0.0; a call raises
(``sys.exit`` too) or returns a non-plain value -> the tests using it fail; hang, memory or output limit ->
the results written before count (partial credit), the rest fail; the sandbox itself fails ->
``SandboxError`` (a ``RewardError``): the scorer counts the sample as failed and leaves it out of the loss,
never a 0 reward.

Limits and isolation: ``timeout_s``/``memory_mb`` may come from a data row, but only lower what the reward
options allow: above ``max_timeout_s``/``max_memory_mb`` (reward options, themselves capped by
``HARD_MAX_TIMEOUT_S``/``HARD_MAX_MEMORY_MB``) the sample is refused. A sandbox with weak isolation on this
machine (``sandbox_setup().weaknesses()``: no root, no namespaces, no seccomp) is refused, naming what it gives
up, unless ``allow_weak_isolation=True`` (reward option ``{code: {allow_weak_isolation: true}}``). The
registry lets a row field override a reward option of the same name, but refuses a row that holds a key of
``code_reward.config_only``: those come from the reward options, never from data rows. ``code_reward`` is thread-safe
(``score_batch`` runs it in worker threads).
"""

from __future__ import annotations

import math
import re
import secrets
from collections.abc import Sequence

from alignkit.rewards import code_judge
from alignkit.rewards.errors import RewardError
from alignkit.rewards.sandbox import SandboxResult, run_in_sandbox, sandbox_setup

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

DEFAULT_MAX_TIMEOUT_S = 30.0
DEFAULT_MAX_MEMORY_MB = 2048
HARD_MAX_TIMEOUT_S = 120.0  # no option raises a run past these
HARD_MAX_MEMORY_MB = 16384
MAX_RESULT_BYTES = 1 << 20  # the judged run's stdout read back; more is an output limit (later calls fail)

# The weak harness for statement tests (statement_tests="weak"): it runs in the solution's interpreter, so
# its verdict is forgeable; kept in its own sandbox run so it cannot touch the judged tests' results.
_WEAK_HARNESS = """\
import os, sys, traceback
_out = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
os.unlink(__file__)
_ns = {{"__name__": "solution", "__builtins__": __builtins__}}
_tests = {tests!r}
try:
    exec(compile({solution!r}, "solution.py", "exec"), _ns)
except BaseException:
    traceback.print_exc()
    _tests = []
for _i, _test in enumerate(_tests):
    try:
        exec(compile(_test, "test_%d" % _i, "exec"), _ns)
        os.write(_out, ("{nonce} %d\\n" % _i).encode())
    except BaseException:
        traceback.print_exc(limit=-1)
"""


class SandboxError(RewardError):
    """The sandbox could not run the code: the sample is unscored, not wrong."""


def extract_code(completion: str) -> str:
    """The last fenced block tagged python/py/python3 or untagged; else the ``<answer>`` content; else all.

    >>> extract_code("Here:\\n```python\\nprint(1)\\n```\\nand ```bash\\nls\\n```")
    'print(1)\\n'
    >>> extract_code("<think>easy</think><answer>x = 1</answer>")
    'x = 1'
    """
    blocks = [body for lang, body in _FENCE.findall(completion) if lang.lower() in ("", "python", "py", "python3")]
    if blocks:
        return blocks[-1]
    answers = _ANSWER.findall(completion)
    return answers[-1].strip() if answers else completion


def _run(code: str, **sandbox_kwargs: object) -> SandboxResult:
    result = run_in_sandbox(code, **sandbox_kwargs)
    if result.status == "sandbox_failure":
        raise SandboxError(f"sandbox failure: {result.detail}")
    return result


def run_tests(code: str, tests: Sequence[str], *, statement_tests: str = "refuse",
              **sandbox_kwargs: object) -> tuple[list[bool], SandboxResult]:
    """Run ``tests`` against ``code``: (passed per test, the judged run's result, or the weak run's when every
    test is a statement test). Statement tests raise ``RewardError`` unless ``statement_tests="weak"``."""
    if statement_tests not in ("refuse", "weak"):
        raise RewardError(f"statement_tests must be 'refuse' or 'weak', not {statement_tests!r}")
    p = code_judge.plan(tests)
    weak = [i for i, checks in enumerate(p.checks) if checks is None]
    if weak and statement_tests != "weak":
        i = weak[0]
        raise RewardError(
            f"{len(weak)} of {len(tests)} tests cannot be judged outside the solution's process, e.g. test {i} "
            f"{tests[i][:80]!r} ({p.why[i]}); write them as asserts over calls with literal arguments, or set the "
            "reward option code.statement_tests: weak to run them in the solution's interpreter, where code "
            "that tampers with the harness can fake a pass (docs/sandbox.md)")
    passed: list[bool] = [False] * len(tests)
    result = None
    if p.calls:
        result = _run(code_judge.driver(code, p.calls), max_output_bytes=MAX_RESULT_BYTES, **sandbox_kwargs)
        results = code_judge.read_results(result.stdout, len(p.calls), complete=not result.truncated)
        for i, verdict in enumerate(code_judge.verdicts(p, results)):
            passed[i] = verdict is True
    elif not weak:  # tests with checks but no calls (e.g. "assert 1 == 1"): still judged here
        for i, verdict in enumerate(code_judge.verdicts(p, [])):
            passed[i] = verdict is True
    if weak:
        nonce = secrets.token_hex(16)
        weak_result = _run(_WEAK_HARNESS.format(tests=[tests[i] for i in weak], solution=code, nonce=nonce),
                           **sandbox_kwargs)
        reported = [line.split()[1] for line in weak_result.stdout.splitlines() if line.startswith(nonce + " ")]
        for k in {int(x) for x in reported if x.isascii() and x.isdigit() and int(x) < len(weak)}:
            passed[weak[k]] = True
        result = result or weak_result
    if result is None:  # no calls and no statement tests: nothing ran
        result = SandboxResult("ok", None, "", "", 0.0)
    return passed, result


def _limit(name: str, value: object, ceiling: float, ceiling_name: str) -> float:
    if type(value) not in (int, float) or not math.isfinite(value) or value <= 0:
        raise RewardError(f"code reward: {name} must be a positive number, not {value!r}")
    if value > ceiling:
        raise RewardError(f"code reward: {name}={value} is over the ceiling {ceiling} ({ceiling_name}); a data row "
                          "may only lower the limits the reward options set")
    return value


def code_reward(completion: str, *, tests: Sequence[str] | str, timeout_s: float = 5.0, memory_mb: int = 512,
                max_timeout_s: float = DEFAULT_MAX_TIMEOUT_S, max_memory_mb: int = DEFAULT_MAX_MEMORY_MB,
                allow_weak_isolation: bool = False, statement_tests: str = "refuse", **_: object) -> float:
    """Share of ``tests`` passed by the completion's code, in [0, 1] (lecture GRPO-6 vectors below).

    >>> tests = ["assert factorial(0) == 1", "assert factorial(5) == 120"]
    >>> code_reward("```python\\ndef factorial(n):\\n    return 1 if n == 0 else n * factorial(n - 1)\\n```", tests=tests)
    1.0
    >>> code_reward("def factorial(n):\\n    return n * n", tests=tests)
    0.0
    """
    tests = [tests] if isinstance(tests, str) else list(tests)
    if not tests:
        raise RewardError("code_reward needs at least one test")
    if any(type(t) is not str for t in tests):
        raise RewardError("code_reward: every test must be a string")
    max_timeout_s = _limit("max_timeout_s", max_timeout_s, HARD_MAX_TIMEOUT_S, "HARD_MAX_TIMEOUT_S")
    max_memory_mb = _limit("max_memory_mb", max_memory_mb, HARD_MAX_MEMORY_MB, "HARD_MAX_MEMORY_MB")
    timeout_s = _limit("timeout_s", timeout_s, max_timeout_s, "reward option code.max_timeout_s")
    memory_mb = int(_limit("memory_mb", memory_mb, max_memory_mb, "reward option code.max_memory_mb"))
    if allow_weak_isolation is not True:
        weaknesses = sandbox_setup().weaknesses()
        if weaknesses:
            raise RewardError("code reward refused: the sandbox here is weaker than designed: "
                              + "; ".join(weaknesses) + ". Set the reward option code.allow_weak_isolation: true "
                              "to score model code anyway, giving up the above")
    passed, _ = run_tests(extract_code(completion), tests, statement_tests=statement_tests, timeout_s=timeout_s,
                          memory_mb=memory_mb)
    return sum(passed) / len(tests)


# Options that must come from the reward options, not a data row (the registry lets a row field override a
# reward option of the same name, and refuses a row that holds one of these).
code_reward.sandboxed = True  # waits on a subprocess: a scorer may run it in worker threads
code_reward.config_only = frozenset({"max_timeout_s", "max_memory_mb", "allow_weak_isolation", "statement_tests"})
