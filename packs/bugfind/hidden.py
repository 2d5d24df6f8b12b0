"""Judge a fixed program: hidden tests for Python (run in the sandbox), static checks otherwise.

The hidden tests live in the item data and are never shown to the model. The model's program is
written as ``solution.py`` next to a small runner that imports it, runs each test (an ``assert``
snippet) in a copy of its namespace under a per-test CPU-time alarm (CPU, not wall time, so a busy
machine does not fail a correct fix; code that sleeps is stopped by the sandbox's wall clock), and
prints one result line tagged with a fresh token, so text the program prints itself cannot pass for
the result.
"""

from __future__ import annotations

import hashlib
import json
import re
import secrets
import threading
from collections import OrderedDict
from dataclasses import dataclass, field
from typing import Any

from bench.sandbox import SandboxResult, run_python

_RUNNER = r'''
import contextlib, io, json, os, signal, sys

TOKEN = {token!r}
TESTS = json.loads({tests!r})
PER_TEST_S = {per_test_s!r}


class _Alarm(BaseException):
    pass


def _on_alarm(signum, frame):
    raise _Alarm()


def capture(function, *args, **kwargs):
    """Call ``function`` and return what it printed (for tests of printing programs)."""
    buffer = io.StringIO()
    with contextlib.redirect_stdout(buffer):
        function(*args, **kwargs)
    return buffer.getvalue()


def _describe(exc):
    if isinstance(exc, _Alarm):
        return "timed out"
    text = f"{{type(exc).__name__}}: {{exc}}" if str(exc) else type(exc).__name__
    return text[:200]


def _finish(payload):
    os.write(1, ("\n" + TOKEN + json.dumps(payload) + "\n").encode())
    os._exit(0)


signal.signal(signal.SIGPROF, _on_alarm)
sys.setrecursionlimit(2000)
signal.setitimer(signal.ITIMER_PROF, PER_TEST_S)
try:
    with contextlib.redirect_stdout(io.StringIO()):
        import solution
    signal.setitimer(signal.ITIMER_PROF, 0)
except BaseException as exc:
    signal.setitimer(signal.ITIMER_PROF, 0)
    _finish({{"import_error": _describe(exc)}})

results = []
for test in TESTS:
    namespace = dict(vars(solution))
    namespace["capture"] = capture
    signal.setitimer(signal.ITIMER_PROF, PER_TEST_S)
    try:
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(test, "<hidden test>", "exec"), namespace)
        signal.setitimer(signal.ITIMER_PROF, 0)
        results.append(None)
    except BaseException as exc:
        signal.setitimer(signal.ITIMER_PROF, 0)
        results.append(_describe(exc))
_finish({{"results": results}})
'''


@dataclass(frozen=True)
class FixVerdict:
    """Whether a fixed program is correct, with the evidence."""

    correct: bool
    passed: int
    total: int
    summary: str  # e.g. "fix passed 3/5 hidden tests (first failure: ...)"
    failures: list[str] = field(default_factory=list)
    sandbox: dict[str, Any] = field(default_factory=dict)


_CACHE_SIZE = 256
_cache: OrderedDict[str, FixVerdict] = OrderedDict()
_cache_lock = threading.Lock()


def run_hidden_tests(
    program: str,
    tests: list[str],
    *,
    timeout_s: float,
    per_test_s: float = 1.0,
    memory_mb: int = 512,
) -> FixVerdict:
    """Run ``tests`` against ``program`` (as module ``solution``) in the sandbox.

    The tests are deterministic, so a verdict is remembered for the same program and tests: the
    same fix given twice (repeats at temperature 0, a rescore) costs one sandbox run.
    """
    facts = [program, tests, float(timeout_s), float(per_test_s), int(memory_mb)]
    key = hashlib.sha256(json.dumps(facts).encode()).hexdigest()
    with _cache_lock:
        if key in _cache:
            _cache.move_to_end(key)
            return _cache[key]
    verdict = _run_hidden_tests(program, tests, timeout_s=timeout_s, per_test_s=per_test_s, memory_mb=memory_mb)
    with _cache_lock:
        _cache[key] = verdict
        while len(_cache) > _CACHE_SIZE:
            _cache.popitem(last=False)
    return verdict


def _run_hidden_tests(program: str, tests: list[str], *, timeout_s: float, per_test_s: float,
                      memory_mb: int) -> FixVerdict:
    token = f"@@bugfind-result-{secrets.token_hex(8)}@@"
    runner = _RUNNER.format(token=token, tests=json.dumps(tests), per_test_s=per_test_s)
    outcome = run_python(
        {"solution.py": program, "run_hidden_tests.py": runner},
        "run_hidden_tests.py",
        timeout_s=timeout_s,
        memory_mb=memory_mb,
    )
    sandbox = _sandbox_facts(outcome)
    payload = _read_payload(outcome.stdout, token)
    total = len(tests)
    if payload is None:
        return FixVerdict(False, 0, total, f"fix produced no test result ({outcome.describe()})", sandbox=sandbox)
    if "import_error" in payload:
        return FixVerdict(False, 0, total, f"fixed program failed to load ({payload['import_error']})",
                          sandbox=sandbox)
    results = payload.get("results")
    if not isinstance(results, list) or len(results) != total:
        return FixVerdict(False, 0, total, "fix produced a malformed test result", sandbox=sandbox)
    failures = [
        f"{test.strip().splitlines()[-1]} -> {problem}"
        for test, problem in zip(tests, results, strict=True)
        if problem is not None
    ]
    passed = total - len(failures)
    summary = f"fix passed {passed}/{total} hidden tests"
    if failures:
        summary += f" (first failure: {failures[0]})"
    return FixVerdict(not failures, passed, total, summary, failures=failures, sandbox=sandbox)


def check_static_fix(program: str, require: list[str], forbid: list[str]) -> FixVerdict:
    """For languages not executed here: the fix must match every ``require`` pattern and no ``forbid``."""
    failures = [f"missing {pattern!r}" for pattern in require if not re.search(pattern, program, re.MULTILINE)]
    failures += [f"still has {pattern!r}" for pattern in forbid if re.search(pattern, program, re.MULTILINE)]
    total = len(require) + len(forbid)
    passed = total - len(failures)
    summary = f"fix passed {passed}/{total} static checks"
    if failures:
        summary += f" ({failures[0]})"
    return FixVerdict(not failures, passed, total, summary, failures=failures)


def _read_payload(stdout: str, token: str) -> dict[str, Any] | None:
    for line in reversed(stdout.splitlines()):
        if line.startswith(token):
            try:
                payload = json.loads(line[len(token):])
            except json.JSONDecodeError:
                return None
            return payload if isinstance(payload, dict) else None
    return None


def _sandbox_facts(outcome: SandboxResult) -> dict[str, Any]:
    return {
        "backend": outcome.backend,
        "wall_s": round(outcome.wall_s, 3),
        "timed_out": outcome.timed_out,
        "returncode": outcome.returncode,
        "stderr_tail": outcome.stderr[-500:],
    }
