"""The code reward's judge: verdicts computed in the trainer from values, never in the solution's process.

A test such as ``assert f([3, 1]) == [1, 3]`` is parsed (``ast``) into *calls* (``f`` with literal arguments)
and a *check* (an expression over the calls' results). Only the calls go into the sandbox: a driver there runs
the solution, performs each call and writes its result, strictly serialized, on the output channel. The
trainer decodes what came back into plain values and evaluates the check itself. The solution controls its
whole process (it can patch ``builtins``, ``json``, ``os.write``, the driver's frames and variables, and can
write anything on stdout), so nothing it can reach decides a verdict:

- the expected values and the checks never enter the sandbox: the solution cannot read them;
- the output is untrusted data: size-capped, parsed as JSON lines (``<call index> TAB <tagged value>``),
  never evaluated; a call with no line, a malformed line or more than one line for its index fails;
- a value is rebuilt from type tags into plain ``int``/``float``/``str``/``bool``/``None``/``list``/``tuple``/
  ``dict``/``set`` (no user class can cross: an object whose ``__eq__`` always says True arrives as nothing);
- comparison is by value and by exact type (``True`` is not ``1``, ``2`` is not ``2.0``, a tuple is not a
  list); floats compare exactly (NaN equals nothing); tolerance only where the test says so
  (``math.isclose(f(x), y, ...)``, ``abs(f(x) - y) < eps``); builtins the test uses (``sorted``, ``set``,
  ``len``, ...) are the trainer's own, so shadowing them in the solution changes nothing.

So the solution's best strategy is to return the right values. (A solution that knows the expected values,
e.g. because the prompt shows the tests, can still hard-code them; that is the data set's problem.)

Supported test forms (a test may hold several such statements; it passes when all do): ``assert <expr>[, msg]``
where ``<expr>`` is built from literals, displays, arithmetic, comparisons, ``and``/``or``/``not``,
subscripts, the trainer-side functions in ``FUNCTIONS`` (and ``math.isclose``/``math.sqrt``/...), and calls
``name(args)`` of the solution's functions whose arguments are solution-free expressions (evaluated here, then
sent as tagged literals); a bare call statement ``f(args)`` (passes when the call returns); ``import math``.
Anything else is a *statement test*: it needs the solution's objects in the test's own interpreter, so any
verdict it gives is forgeable by the solution. ``code_reward`` refuses those unless told
``statement_tests="weak"`` (see ``alignkit.rewards.code`` and docs/sandbox.md).
"""

from __future__ import annotations

import ast
import json
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

MAX_DEPTH = 64  # nesting of a decoded or transported value
MAX_NODES = 200_000  # values in one decoded result
MAX_HASHED = 10_000  # elements of one set or dict (bounds hash-collision work on crafted ints)
MAX_INT_HEX = 10_000  # hex digits of one int
MAX_SEQ = 1_000_000  # length of a sequence the trainer builds with * (a check like f(x) * 3)


class Unsupported(Exception):
    """This test is not of a form the judge verifies outside the solution's process."""


class Failed(Exception):
    """A check failed: a call raised, returned nothing usable, or the expression went wrong on its value."""


class _Nan:
    """A NaN's canonical form: equal to nothing, itself included."""

    __slots__ = ()

    def __eq__(self, other: object) -> bool:
        return False

    def __hash__(self) -> int:
        return 0


# ---------------------------------------------------------------- values: strict encoding and comparison


def encode(value: object, _depth: int = 0) -> object:
    """``value`` as tagged JSON data, or ``Failed`` when it is not a plain value (``type(x) is ...`` only)."""
    if _depth > MAX_DEPTH:
        raise Failed("value nested too deep")
    t = type(value)
    if t is bool:
        return ["b", value]
    if t is int:
        return ["i", hex(value)]
    if t is float:
        return ["f", repr(value)]
    if t is str:
        return ["s", value]
    if value is None:
        return ["n"]
    if t is list or t is tuple or t is set:
        return [{list: "l", tuple: "t", set: "S"}[t], [encode(v, _depth + 1) for v in value]]
    if t is dict:
        return ["d", [[encode(k, _depth + 1), encode(v, _depth + 1)] for k, v in value.items()]]
    raise Failed(f"{t.__name__} is not a plain value")


def decode(data: object) -> object:
    """Tagged JSON data (untrusted) -> a plain value; ``Failed`` on anything malformed or over the limits."""
    budget = [MAX_NODES]

    def dec(d: object, depth: int) -> object:
        budget[0] -= 1
        if budget[0] < 0 or depth > MAX_DEPTH:
            raise Failed("result too large or too deep")
        if type(d) is not list or not d or type(d[0]) is not str:
            raise Failed("malformed result")
        tag, rest = d[0], d[1:]
        if tag == "n" and not rest:
            return None
        if len(rest) != 1:
            raise Failed("malformed result")
        x = rest[0]
        if tag == "b" and type(x) is bool:
            return x
        if tag == "i" and type(x) is str and len(x) <= MAX_INT_HEX + 3:
            try:
                return int(x, 16)
            except ValueError as e:
                raise Failed("malformed int") from e
        if tag == "f" and type(x) is str and len(x) <= 40:
            try:
                return float(x)
            except ValueError as e:
                raise Failed("malformed float") from e
        if tag == "s" and type(x) is str:
            return x
        if tag in ("l", "t", "S") and type(x) is list:
            items = [dec(v, depth + 1) for v in x]
            if tag == "l":
                return items
            if tag == "t":
                return tuple(items)
            return _make_set(items)
        if tag == "d" and type(x) is list:
            if len(x) > MAX_HASHED:
                raise Failed("dict too large")
            out: dict = {}
            for pair in x:
                if type(pair) is not list or len(pair) != 2:
                    raise Failed("malformed dict")
                k, v = dec(pair[0], depth + 1), dec(pair[1], depth + 1)
                _canon(k)  # hashable plain key, or Failed
                if k in out:
                    raise Failed("duplicate dict key")
                out[k] = v
            return out
        raise Failed("malformed result")

    return dec(data, 0)


def _make_set(items: list, kind: type = set) -> set | frozenset:
    if len(items) > MAX_HASHED:
        raise Failed("set too large")
    for item in items:
        _canon(item)
    return kind(items)


def _canon(x: object) -> object:
    """A hashable form of a plain value whose ``==`` is type-exact (hashes only strings, tuples, bools)."""
    t = type(x)
    if t is bool:
        return ("b", x)
    if t is int:
        return ("i", hex(x))
    if t is float:
        if x != x:
            return ("f", _Nan())
        return ("f", repr(x + 0.0))  # -0.0 + 0.0 == 0.0: 0.0 == -0.0 as in Python
    if t is str:
        return ("s", x)
    if x is None:
        return ("n",)
    if t is tuple:
        return ("t", tuple(_canon(v) for v in x))
    if t is frozenset:
        return ("F", frozenset(_canon(v) for v in x))
    raise Failed(f"unhashable {t.__name__}")


def same(a: object, b: object) -> bool:
    """Type-exact equality of plain values (bool is not int, int is not float, list is not tuple); NaN != NaN.

    >>> same([1, (2.0, "x")], [1, (2.0, "x")]), same(True, 1), same(2, 2.0), same({1: [True]}, {1: [True]})
    (True, False, False, True)
    """
    ta = type(a)
    if ta is not type(b):
        return False
    if ta in (bool, int, float, str) or a is None:
        return a == b
    if ta is list or ta is tuple:
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if ta is dict:
        if len(a) != len(b):
            return False
        bmap = {_canon(k): v for k, v in b.items()}
        for k, v in a.items():
            ck = _canon(k)
            if ck not in bmap or not same(v, bmap[ck]):
                return False
        return True
    if ta is set or ta is frozenset:
        return {_canon(v) for v in a} == {_canon(v) for v in b}
    raise Failed(f"cannot compare {ta.__name__}")


def _contains(container: object, item: object) -> bool:
    t = type(container)
    if t is str:
        if type(item) is not str:
            raise Failed("'in <str>' needs a str")
        return item in container
    if t is list or t is tuple:
        return any(same(item, v) for v in container)
    if t in (set, frozenset, dict):
        return _canon(item) in {_canon(v) for v in container}
    raise Failed(f"'in' on {t.__name__}")


# ---------------------------------------------------------------- trainer-side functions a test may use


def _guard_len(n: int) -> None:
    if n > MAX_SEQ:
        raise Failed("sequence too long")


# The values these see are plain (decoded here or written in the test), so the builtins run no user code;
# set/frozenset are bounded (hashing crafted ints can be quadratic).
FUNCTIONS: dict[str, Callable] = {
    "abs": abs, "len": len, "sorted": sorted, "list": list, "tuple": tuple, "round": round, "min": min,
    "max": max, "sum": sum, "any": any, "all": all, "bool": bool, "int": int, "float": float, "str": str,
    "set": lambda x=(): _make_set(list(x)), "frozenset": lambda x=(): _make_set(list(x), frozenset),
    "math.isclose": math.isclose, "math.sqrt": math.sqrt, "math.fabs": math.fabs, "math.floor": math.floor,
    "math.ceil": math.ceil, "math.isnan": math.isnan, "math.isinf": math.isinf,
}
CONSTANTS = {"math.pi": math.pi, "math.e": math.e, "math.inf": math.inf, "math.tau": math.tau}
_TRANSPORT_TYPES = (bool, int, float, str, type(None), list, tuple, dict, set)


def _binop(op: ast.operator, a: object, b: object) -> object:
    num = (int, float, bool)
    if isinstance(op, ast.Mult):
        for seq, n in ((a, b), (b, a)):
            if type(seq) in (str, list, tuple) and type(n) in (int, bool):
                _guard_len(len(seq) * max(0, n))
    if isinstance(op, ast.Pow) and type(a) in num and type(b) in num:
        if type(b) is int and abs(b) > 10_000 and type(a) is int and abs(a) > 1:
            raise Failed("power too large")
    if isinstance(op, ast.Add) and type(a) in (str, list, tuple):
        _guard_len(len(a) + (len(b) if type(b) is type(a) else 0))
    ops = {ast.Add: lambda: a + b, ast.Sub: lambda: a - b, ast.Mult: lambda: a * b, ast.Div: lambda: a / b,
           ast.FloorDiv: lambda: a // b, ast.Mod: lambda: a % b, ast.Pow: lambda: a ** b}
    fn = ops.get(type(op))
    if fn is None:
        raise Unsupported(f"operator {type(op).__name__}")
    return fn()


def _compare(op: ast.cmpop, a: object, b: object) -> bool:
    if isinstance(op, ast.Eq):
        return same(a, b)
    if isinstance(op, ast.NotEq):
        return not same(a, b)
    if isinstance(op, ast.Is):
        return same(a, b)  # only allowed against None/True/False (checked when compiling)
    if isinstance(op, ast.IsNot):
        return not same(a, b)
    if isinstance(op, ast.In):
        return _contains(b, a)
    if isinstance(op, ast.NotIn):
        return not _contains(b, a)
    ordered = {ast.Lt: lambda: a < b, ast.LtE: lambda: a <= b, ast.Gt: lambda: a > b, ast.GtE: lambda: a >= b}
    return bool(ordered[type(op)]())


# ---------------------------------------------------------------- parsing tests into calls and checks


@dataclass(frozen=True)
class Call:
    """One call the sandbox performs: ``func(*args, **kwargs)`` with plain (transportable) values."""

    func: str
    args: tuple
    kwargs: tuple  # ((name, value), ...)


Evaluator = Callable[[Sequence[object]], object]  # results by call index -> value (raises Failed)
_RETURNED = object()  # a call returned something that is not a plain value (fine for a bare call statement)


@dataclass
class Plan:
    """The calls to perform and, per test, the checks (None: a statement test the judge cannot verify)."""

    calls: list[Call] = field(default_factory=list)
    checks: list[list[Evaluator] | None] = field(default_factory=list)
    why: list[str] = field(default_factory=list)  # per test: why it is a statement test ("" otherwise)


def _dotted(node: ast.expr) -> str | None:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "math":
        return "math." + node.attr
    return None


class _Compiler:
    def __init__(self, calls: list[Call]) -> None:
        self.calls = calls

    def const(self, node: ast.expr) -> object:
        """A solution-free expression, evaluated now (a call argument)."""
        fn = self.expr(node, allow_calls=False)
        try:
            value = fn(())
        except (Failed, ArithmeticError, ValueError, TypeError, OverflowError) as e:
            raise Unsupported(f"argument {ast.unparse(node)!r} does not evaluate: {e}") from e
        try:
            encode(value)
        except Failed as e:
            raise Unsupported(f"argument {ast.unparse(node)!r}: {e}") from e
        return value

    def expr(self, node: ast.expr, *, allow_calls: bool = True) -> Evaluator:
        rec = lambda n: self.expr(n, allow_calls=allow_calls)  # noqa: E731
        if isinstance(node, ast.Constant):
            if type(node.value) not in _TRANSPORT_TYPES:
                raise Unsupported(f"literal {node.value!r}")
            v = node.value
            return lambda r: v
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                raise Unsupported("starred element")
            parts = [rec(e) for e in node.elts]
            kind = {ast.List: list, ast.Tuple: tuple, ast.Set: lambda xs: _make_set(list(xs))}[type(node)]
            return lambda r: kind([p(r) for p in parts])
        if isinstance(node, ast.Dict):
            if any(k is None for k in node.keys):
                raise Unsupported("dict unpacking")
            ks, vs = [rec(k) for k in node.keys], [rec(v) for v in node.values]

            def make_dict(r: Sequence[object]) -> dict:
                out = {}
                for k, v in zip(ks, vs):
                    key = k(r)
                    _canon(key)
                    out[key] = v(r)
                return out
            return make_dict
        if isinstance(node, ast.UnaryOp):
            inner = rec(node.operand)
            op = type(node.op)
            if op is ast.Not:
                return lambda r: not _truth(inner(r))
            if op is ast.USub:
                return lambda r: -_number(inner(r))
            if op is ast.UAdd:
                return lambda r: +_number(inner(r))
            raise Unsupported(f"operator {op.__name__}")
        if isinstance(node, ast.BinOp):
            left, right, op = rec(node.left), rec(node.right), node.op
            if not isinstance(op, (ast.Add, ast.Sub, ast.Mult, ast.Div, ast.FloorDiv, ast.Mod, ast.Pow)):
                raise Unsupported(f"operator {type(op).__name__}")
            return lambda r: _binop(op, left(r), right(r))
        if isinstance(node, ast.BoolOp):
            parts = [rec(v) for v in node.values]
            if isinstance(node.op, ast.And):
                def all_of(r: Sequence[object]) -> object:
                    v: object = True
                    for p in parts:
                        v = p(r)
                        if not _truth(v):
                            return v
                    return v
                return all_of

            def any_of(r: Sequence[object]) -> object:
                v: object = False
                for p in parts:
                    v = p(r)
                    if _truth(v):
                        return v
                return v
            return any_of
        if isinstance(node, ast.Compare):
            operands = [node.left, *node.comparators]
            for i, op in enumerate(node.ops):
                if isinstance(op, (ast.Is, ast.IsNot)) and not any(
                        isinstance(n, ast.Constant) and n.value in (None, True, False) and type(n.value) in
                        (bool, type(None)) for n in operands[i:i + 2]):
                    raise Unsupported("'is' against something other than None/True/False")
            fns, ops = [rec(n) for n in operands], node.ops

            def chain(r: Sequence[object]) -> bool:
                left = fns[0](r)
                for op, fn in zip(ops, fns[1:]):
                    right = fn(r)
                    if not _compare(op, left, right):
                        return False
                    left = right
                return True
            return chain
        if isinstance(node, ast.IfExp):
            test, body, orelse = rec(node.test), rec(node.body), rec(node.orelse)
            return lambda r: body(r) if _truth(test(r)) else orelse(r)
        if isinstance(node, ast.Subscript):
            value = rec(node.value)
            if isinstance(node.slice, ast.Slice):
                lo, hi, st = (rec(p) if p is not None else (lambda r: None)
                              for p in (node.slice.lower, node.slice.upper, node.slice.step))
                return lambda r: _subscript(value(r), slice(lo(r), hi(r), st(r)))
            index = rec(node.slice)
            return lambda r: _subscript(value(r), index(r))
        if isinstance(node, ast.Attribute):
            name = _dotted(node)
            if name in CONSTANTS:
                v = CONSTANTS[name]
                return lambda r: v
            raise Unsupported(f"attribute {ast.unparse(node)!r}")
        if isinstance(node, ast.Call):
            return self.call(node, allow_calls)
        raise Unsupported(f"{type(node).__name__} {ast.unparse(node)!r}")

    def call(self, node: ast.Call, allow_calls: bool) -> Evaluator:
        name = _dotted(node.func)
        if name is None:
            raise Unsupported(f"call of {ast.unparse(node.func)!r}")
        if any(isinstance(a, ast.Starred) for a in node.args) or any(k.arg is None for k in node.keywords):
            raise Unsupported("star arguments")
        if name in FUNCTIONS:
            fn = FUNCTIONS[name]
            args = [self.expr(a, allow_calls=allow_calls) for a in node.args]
            kws = [(k.arg, self.expr(k.value, allow_calls=allow_calls)) for k in node.keywords]

            def builtin(r: Sequence[object]) -> object:
                try:
                    return fn(*[a(r) for a in args], **{k: v(r) for k, v in kws})
                except Failed:
                    raise
                except (ArithmeticError, ValueError, TypeError, OverflowError) as e:
                    raise Failed(f"{name}: {e}") from e
            return builtin
        if "." in name or not allow_calls:
            raise Unsupported(f"call of {name!r} here")
        call = Call(name, tuple(self.const(a) for a in node.args),
                    tuple((k.arg, self.const(k.value)) for k in node.keywords))
        index = len(self.calls)
        self.calls.append(call)

        def result(r: Sequence[object]) -> object:
            v = r[index]
            if v is _RETURNED or isinstance(v, Failed):
                raise Failed(f"call {index} ({name}) gave no plain value")
            return v
        return result


def _truth(v: object) -> bool:
    if type(v) in _TRANSPORT_TYPES or type(v) is frozenset:
        return bool(v)
    raise Failed("truth of a non-plain value")


def _number(v: object) -> object:
    if type(v) in (int, float, bool):
        return v
    raise Failed("not a number")


def _subscript(value: object, index: object) -> object:
    if type(value) in (list, tuple, str) and (type(index) in (int, bool) or type(index) is slice):
        try:
            return value[index]
        except IndexError as e:
            raise Failed("index out of range") from e
    if type(value) is dict:
        ck = _canon(index)
        for k, v in value.items():
            if _canon(k) == ck:
                return v
        raise Failed("key not found")
    raise Failed(f"cannot index {type(value).__name__}")


def _compile_test(source: str, calls: list[Call]) -> list[Evaluator]:
    try:
        tree = ast.parse(source, mode="exec")
    except SyntaxError as e:
        raise Unsupported(f"does not parse: {e.msg}") from e
    compiler, checks = _Compiler(calls), []
    for stmt in tree.body:
        if isinstance(stmt, ast.Assert):
            fn = compiler.expr(stmt.test)
            checks.append(lambda r, fn=fn: _truth(fn(r)))
        elif isinstance(stmt, ast.Expr) and isinstance(stmt.value, ast.Call) and _dotted(stmt.value.func) \
                and _dotted(stmt.value.func) not in FUNCTIONS:
            before = len(calls)
            compiler.call(stmt.value, True)
            index = before

            def returned(r: Sequence[object], index: int = index) -> bool:
                return not isinstance(r[index], Failed)
            checks.append(returned)
        elif isinstance(stmt, ast.Import) and all(a.name == "math" and a.asname is None for a in stmt.names):
            continue
        else:
            raise Unsupported(f"statement {ast.unparse(stmt)[:60]!r}")
    if not checks:
        raise Unsupported("no assert")
    return checks


def plan(tests: Sequence[str]) -> Plan:
    """Parse ``tests`` into the calls to run in the sandbox and the checks to evaluate here.

    >>> p = plan(["assert f(2) == 4", "assert sorted(f([1, -1])) == [1, 1]", "x = f(1)"])
    >>> [(c.func, c.args) for c in p.calls], [c is None for c in p.checks]
    ([('f', (2,)), ('f', ([1, -1],))], [False, False, True])
    """
    out = Plan()
    for source in tests:
        calls: list[Call] = []
        try:
            checks = _compile_test(source, calls)
        except Unsupported as e:
            out.checks.append(None)
            out.why.append(str(e))
            continue
        # shift this test's call indices to their place in the global list
        lo, hi = len(out.calls), len(out.calls) + len(calls)
        out.calls.extend(calls)
        out.checks.append([(lambda r, fn=fn, lo=lo, hi=hi: fn(r[lo:hi])) for fn in checks])
        out.why.append("")
    return out


# ---------------------------------------------------------------- the sandbox side and reading its output

DRIVER = r'''
import json, os, sys, traceback
def _dec(d):
    t = d[0]
    if t == "n": return None
    x = d[1]
    if t in ("b", "s"): return x
    if t == "i": return int(x, 16)
    if t == "f": return float(x)
    if t == "l": return [_dec(v) for v in x]
    if t == "t": return tuple(_dec(v) for v in x)
    if t == "S": return set(_dec(v) for v in x)
    if t == "d": return {_dec(k): _dec(v) for k, v in x}
    raise ValueError(t)
def _enc(v, depth=0):
    if depth > %(depth)d: raise ValueError("too deep")
    t = type(v)
    if t is bool: return ["b", v]
    if t is int: return ["i", hex(v)]
    if t is float: return ["f", repr(v)]
    if t is str: return ["s", v]
    if v is None: return ["n"]
    if t is list or t is tuple or t is set:
        return [{list: "l", tuple: "t", set: "S"}[t], [_enc(x, depth + 1) for x in v]]
    if t is dict: return ["d", [[_enc(k, depth + 1), _enc(x, depth + 1)] for k, x in v.items()]]
    raise TypeError(t.__name__)
_calls = [(n, [_dec(a) for a in args], {k: _dec(v) for k, v in kw}) for n, args, kw in json.loads(%(calls)r)]
_out = os.dup(1)
os.dup2(os.open(os.devnull, os.O_WRONLY), 1)
os.unlink(__file__)
_ns = {"__name__": "solution", "__builtins__": __builtins__}
try:
    exec(compile(%(solution)r, "solution.py", "exec"), _ns)
except BaseException:
    traceback.print_exc()
    _calls = []
for _i, (_name, _args, _kwargs) in enumerate(_calls):
    try:
        _f = _ns[_name] if _name in _ns else getattr(_ns["__builtins__"], _name)
        _r = _f(*_args, **_kwargs)
    except BaseException:
        traceback.print_exc(limit=-1)
        continue
    try:
        _s = json.dumps(_enc(_r), ensure_ascii=True, separators=(",", ":"))
    except BaseException:
        _s = "!"
    os.write(_out, ("%%d\t%%s\n" %% (_i, _s)).encode())
'''


def driver(solution: str, calls: Sequence[Call]) -> str:
    """The program the sandbox runs: the solution, then each call, one result line each on the saved stdout.
    It holds the call arguments only: never a test, an expected value or a check."""
    data = [[c.func, [encode(a) for a in c.args], [[k, encode(v)] for k, v in c.kwargs]] for c in calls]
    return DRIVER % {"depth": MAX_DEPTH, "calls": json.dumps(data), "solution": solution}


def read_results(stdout: str, n_calls: int, *, complete: bool) -> list[object]:
    """Results by call index from the sandbox's (untrusted) stdout: a plain value, ``_RETURNED`` (the call
    returned a non-plain value), or a ``Failed`` (no line, several lines, or a malformed one). Lines that name
    no call are ignored: they cannot make a call pass. ``complete`` False: the last line may be cut short."""
    lines = stdout.split("\n")
    if not complete or lines[-1] != "":
        lines = lines[:-1]  # a line without its newline may be cut: never trust it
    seen: dict[int, list[str]] = {}
    for line in lines:
        index, tab, payload = line.partition("\t")
        if tab and index.isascii() and index.isdigit() and len(index) <= 9 and int(index) < n_calls:
            seen.setdefault(int(index), []).append(payload)
    results: list[object] = []
    for i in range(n_calls):
        payloads = seen.get(i, [])
        if len(payloads) != 1:
            results.append(Failed("no result" if not payloads else "several results"))
            continue
        payload = payloads[0]
        if payload == "!":
            results.append(_RETURNED)
            continue
        try:
            results.append(decode(json.loads(payload)))
        except (Failed, ValueError, RecursionError) as e:
            results.append(e if isinstance(e, Failed) else Failed(f"malformed result: {type(e).__name__}"))
    return results


def verdicts(p: Plan, results: Sequence[object]) -> list[bool | None]:
    """Per test: True/False from the checks evaluated here on ``results``, None for a statement test."""
    out: list[bool | None] = []
    for checks in p.checks:
        if checks is None:
            out.append(None)
            continue
        ok = True
        for check in checks:
            try:
                ok = bool(check(results)) is True
            except (Failed, ArithmeticError, ValueError, TypeError, OverflowError, RecursionError):
                ok = False
            if not ok:
                break
        out.append(ok)
    return out
