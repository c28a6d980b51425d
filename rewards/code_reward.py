"""The `"code"` reward: run the completion's final Python code block against the row's tests.

The `tests` row field takes one of two forms:

1. I/O cases: a list of `{"stdin": str, "stdout": str}`. The program runs once per case with
   that stdin; a case passes when it exits cleanly and its output equals the expected output
   after stripping both ends and trailing whitespace on every line. Reward: the fraction of
   cases passed. APPS/TACO-style `{"inputs": [...], "outputs": [...]}` is read as the same
   list, and either form may come as a JSON string (how some datasets store nested columns).
2. Assertions: a string of Python statements (typically `assert f(2) == 4` lines) appended
   after the program, run once. Reward 1.0 if it exits cleanly having reached the end of the
   tests, else 0.0. "Reached the end" is checked with a random token printed after the last
   assertion, so a program that calls `sys.exit(0)` before the tests does not pass.

Every run goes through `rewards.sandbox.run_python` (own process, limits, isolation); this
module only builds the programs and compares outputs.
"""

from __future__ import annotations

import json
import secrets

FENCE = "```"
PYTHON_TAGS = ("python", "python3", "py")
MAX_CODE_CHARS = 100_000
CODE_WINDOW_CHARS = 200_000  # the final code block sits near the end of a completion


def final_code_block(text: str) -> str | None:
    """Body of the last complete ```python (or ```py / ```python3) block, else of the last
    complete ``` block of any language, else None. An unclosed block (truncated output) does
    not count. Only the last CODE_WINDOW_CHARS characters are searched."""
    if not isinstance(text, str):
        return None
    window = text[-CODE_WINDOW_CHARS:]
    blocks: list[tuple[str, str]] = []
    position = 0
    while True:
        opening = window.find(FENCE, position)
        if opening < 0:
            break
        line_end = window.find("\n", opening)
        if line_end < 0:
            break
        closing = window.find(FENCE, line_end)
        if closing < 0:
            break
        info = window[opening + len(FENCE):line_end].split()  # "python title=x" -> python
        language = info[0].lower() if info else ""
        blocks.append((language, window[line_end + 1:closing]))
        position = closing + len(FENCE)
    for language, body in reversed(blocks):
        if language in PYTHON_TAGS:
            return body
    return blocks[-1][1] if blocks else None


def code_reward(
    completion: str,
    tests: object = None,
    *,
    timeout_s: float = 5.0,
    memory_mb: int = 512,
    **fields: object,
) -> float:
    """Fraction of the row's `tests` (see the module docstring) the final code block passes.

    `timeout_s` and `memory_mb` are the sandbox limits of each run. A completion without a
    code block, or with more than MAX_CODE_CHARS of code, scores 0.0. Raises ValueError only
    for a `tests` field of neither form (a bad dataset row); never on model text.
    """
    cases = parse_tests(tests)
    code = final_code_block(completion)
    if not code or not code.strip() or len(code) > MAX_CODE_CHARS:
        return 0.0
    from rewards.sandbox import run_python  # spawns processes: only loaded where code is graded

    if isinstance(cases, str):
        return _run_assertions(run_python, code, cases, timeout_s, memory_mb)
    passed = 0
    for stdin, expected in cases:
        result = run_python(code, stdin=stdin, timeout_s=timeout_s, memory_mb=memory_mb)
        if result.ok and normalize_output(result.stdout) == normalize_output(expected):
            passed += 1
    return passed / len(cases)


def parse_tests(tests: object) -> str | list[tuple[str, str]]:
    """The `tests` field as an assertion string or a non-empty list of (stdin, stdout) pairs."""
    if isinstance(tests, str):
        stripped = tests.lstrip()
        if stripped[:1] in ("[", "{"):
            try:
                return parse_tests(json.loads(stripped))
            except json.JSONDecodeError:
                pass  # not JSON: a Python dict/list display among assertions
        if not tests.strip():
            raise ValueError("code: row field 'tests' is an empty string")
        return tests
    if isinstance(tests, dict) and "inputs" in tests and "outputs" in tests:
        inputs, outputs = list(tests["inputs"]), list(tests["outputs"])
        if len(inputs) != len(outputs):
            raise ValueError("code: row field 'tests' has different numbers of inputs and outputs")
        tests = [{"stdin": i, "stdout": o} for i, o in zip(inputs, outputs)]
    sequence = hasattr(tests, "__iter__") and hasattr(tests, "__len__")
    if sequence and not isinstance(tests, (bytes, dict)):
        tests = list(tests)  # a list, tuple or NumPy array of cases, as dataset loaders give them
    if isinstance(tests, list) and tests:
        cases = []
        for case in tests:
            if not (isinstance(case, dict) and isinstance(case.get("stdin"), str)
                    and isinstance(case.get("stdout"), str)):
                raise ValueError(
                    f"code: each test case needs string 'stdin' and 'stdout', got {case!r:.80}")
            cases.append((case["stdin"], case["stdout"]))
        return cases
    raise ValueError(
        "code: row field 'tests' must be a non-empty list of {'stdin', 'stdout'} cases or a string "
        f"of assertions, got {type(tests).__name__}"
    )


def normalize_output(text: str) -> str:
    """Output as compared: both ends stripped, trailing whitespace of each line dropped."""
    return "\n".join(line.rstrip() for line in text.strip().splitlines())


def _run_assertions(run_python, code: str, assertions: str, timeout_s: float,
                    memory_mb: int) -> float:
    # The token is printed only after the last assertion; the program cannot know it in
    # advance, so an early sys.exit(0) or os._exit(0) cannot fake a pass.
    token = f"aha-tests-passed-{secrets.token_hex(16)}"
    program = f"{code}\n\n{assertions}\n\nprint({token!r}, flush=True)\n"
    result = run_python(program, stdin="", timeout_s=timeout_s, memory_mb=memory_mb)
    lines = result.stdout.rstrip().splitlines()
    return 1.0 if result.ok and lines and lines[-1] == token else 0.0
