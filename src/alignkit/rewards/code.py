"""Code-execution reward (lecture GRPO-08): the share of test cases that model-written code passes.

Tests are Python statement strings, usually asserts (``"assert factorial(5) == 120"``); a test passes when it
runs without raising. One sandbox run per completion (``alignkit.rewards.sandbox``): a small harness
executes the solution as module ``solution`` (so an ``if __name__ == "__main__":`` demo does not run; stdin
is empty), then each test in the solution's namespace, and reports each result on a private copy of stdout.
The solution's own prints go to /dev/null; its errors to stderr.

- solution does not compile or raises at import -> every test fails -> 0.0;
- a test raises (AssertionError, exception, ``sys.exit``) -> that test fails;
- hang, memory or output limit -> the tests reported before it count (partial credit), the rest fail;
- ``os._exit(0)`` or killing the harness -> unreported tests fail (exiting early cannot pass anything);
- the sandbox itself fails -> ``SandboxError`` (a ``RewardError``): the scorer counts the sample as failed
  and leaves it out of the loss, never a 0 reward.

Known limits, for test writers: code that introspects the harness (it runs in the same interpreter) could
forge results, and a returned object whose ``__eq__`` always says True passes ``==`` asserts; assert types
(``type(f(5)) is int``) where it matters.
"""

from __future__ import annotations

import re
import secrets
from collections.abc import Sequence

from alignkit.rewards.errors import RewardError
from alignkit.rewards.sandbox import SandboxResult, run_in_sandbox

_FENCE = re.compile(r"```[ \t]*([A-Za-z0-9_+-]*)[^\n]*\n(.*?)```", re.DOTALL)
_ANSWER = re.compile(r"<answer>(.*?)</answer>", re.DOTALL)

_HARNESS = """\
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


def run_tests(code: str, tests: Sequence[str], **sandbox_kwargs: object) -> tuple[list[bool], SandboxResult]:
    """Run ``tests`` against ``code`` in one sandbox run: (passed per test, the run's result)."""
    nonce = secrets.token_hex(16)
    result = run_in_sandbox(_HARNESS.format(tests=list(tests), solution=code, nonce=nonce), **sandbox_kwargs)
    if result.status == "sandbox_failure":
        raise SandboxError(f"sandbox failure: {result.detail}")
    passed = {int(line.split()[1]) for line in result.stdout.splitlines()
              if line.startswith(nonce + " ") and line.split()[1].isdigit()}
    return [i in passed for i in range(len(tests))], result


def code_reward(completion: str, *, tests: Sequence[str] | str, timeout_s: float = 5.0, memory_mb: int = 512,
                **_: object) -> float:
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
    passed, _ = run_tests(extract_code(completion), tests, timeout_s=timeout_s, memory_mb=memory_mb)
    return sum(passed) / len(tests)
