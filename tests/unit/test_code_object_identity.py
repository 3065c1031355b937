"""Functions without readable source (``python -c``, heredocs, the REPL, ``exec``) are identified
by their compiled code object, run in-process and on the worker pool, and keep a checksum that
does not depend on the file name, line numbers or string hash randomisation."""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import textwrap

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from seamless.code import FunctionCode, namespace_for
from seamless.execution.runner import Work, run
from seamless.transformer import delayed

SCRIPT = textwrap.dedent("""\
    from seamless.transformer import delayed, spawn

    @delayed
    def score(x, k=3, *, tags=("a", "b")):
        "A body whose identity includes a frozenset constant and defaults."
        return x * k + len(tags) + (100 if x in {"p", "q", 7, "r", "s"} else 0) + OFFSET

    @delayed
    def boom(x):
        raise KeyError(x)

    @delayed
    def driver(n):
        from seamless.transformer import delayed

        @delayed
        def square(i):
            return i * i

        return sum(square(i).run() for i in range(n))

    print("CK", score._code.checksum, score._code.kind)
    print("PROCESS", score(7).run())
    spawn(1)
    print("SPAWN", score(2).run())
    print("NESTED", driver(4).run())
    try:
        boom(5).run()
    except KeyError as exc:
        print("FAILURE", exc.traceback.replace("\\n", "|"))
    """)


def _run_python(args, stdin=None, seed="0"):
    env = dict(os.environ, SEAMLESS_CACHE="off", PYTHONHASHSEED=seed)
    out = subprocess.run([sys.executable, *args], input=stdin, capture_output=True, text=True,
                         env=env, timeout=180)
    assert out.returncode == 0, out.stderr
    lines = {}
    for line in out.stdout.splitlines():
        for key in ("CK", "PROCESS", "SPAWN", "NESTED", "FAILURE"):
            if line.startswith(key + " ") or line.startswith(">>> " + key + " "):
                lines[key] = line.split(key + " ", 1)[1]
    return lines


def _script(offset=1):
    return SCRIPT.replace("OFFSET", str(offset))


def test_python_c_runs_in_process_and_on_the_pool_with_a_stable_checksum():
    first = _run_python(["-c", _script()], seed="1")
    second = _run_python(["-c", _script()], seed="2")
    checksum, kind = first["CK"].split()
    assert kind == "code-object"
    assert second["CK"] == first["CK"]
    assert first["PROCESS"] == str(7 * 3 + 2 + 100 + 1)
    assert first["SPAWN"] == str(2 * 3 + 2 + 1)
    assert first["NESTED"] == str(0 + 1 + 4 + 9)  # a body's own nested def, on the pool
    changed = _run_python(["-c", _script(offset=2)])
    assert changed["CK"].split()[0] != checksum
    assert changed["PROCESS"] == str(7 * 3 + 2 + 100 + 2)


def test_heredoc_and_python_c_give_the_same_identity():
    via_c = _run_python(["-c", _script()])
    shifted = "\n\n\n" + _script()  # other line numbers, file name <stdin>: same identity
    via_stdin = _run_python(["-"], stdin=shifted, seed="3")
    assert via_stdin["CK"] == via_c["CK"]
    assert via_stdin["SPAWN"] == via_c["SPAWN"]


def test_failure_traceback_names_the_function_and_its_pseudo_file():
    lines = _run_python(["-c", _script()])
    trace = lines["FAILURE"].split("|")
    raise_line = _script().splitlines().index("    raise KeyError(x)") + 1
    assert f'  File "<string>", line {raise_line}, in boom' in trace
    assert trace[-2] == "KeyError: 5"


def test_interactive_prompt_fed_by_stdin():
    session = _script() + "\n"
    interactive = _run_python(["-i", "-q"], stdin=session)
    via_c = _run_python(["-c", _script()])
    assert interactive["CK"] == via_c["CK"]
    assert interactive["PROCESS"] == via_c["PROCESS"]


# ---------------------------------------------------------------- in-process


def _exec_function(source: str, filename="<stdin>", name="f", first_line=1):
    ns = {}
    exec(compile("\n" * (first_line - 1) + source, filename, "exec"), ns)
    return ns[name]


@settings(max_examples=40, deadline=None)
@given(st.sampled_from(["<stdin>", "<string>", "<python-input-3>"]),
       st.integers(min_value=1, max_value=500))
def test_identity_ignores_file_name_and_line_numbers(filename, first_line):
    source = "def f(x):\n    return x + 1\n"
    reference = delayed(_exec_function(source))._code
    moved = delayed(_exec_function(source, filename, first_line=first_line))._code
    assert moved.checksum == reference.checksum
    assert (moved.filename, moved.first_line) == (filename, first_line)


_constants = st.recursive(
    st.none() | st.booleans() | st.integers()
    | st.floats(allow_nan=False, allow_infinity=False) | st.text() | st.binary(),
    lambda inner: st.tuples(inner, inner), max_leaves=6)


@settings(max_examples=150, deadline=None)
@given(_constants, _constants)
def test_checksum_differs_exactly_when_the_constant_differs(a, b):
    """``repr`` tells these constants apart exactly (1, 1.0, True; 0.0 and -0.0)."""
    fa = _exec_function(f"def f():\n    return {a!r}\n")
    fb = _exec_function(f"def f():\n    return {b!r}\n")
    same = delayed(fa)._code.checksum == delayed(fb)._code.checksum
    assert same == (repr(a) == repr(b))


def test_checksum_survives_specialisation_of_the_running_code():
    func = _exec_function("def f(x):\n    s = 0.0\n    for i in range(x):\n"
                          "        s += i * 2.5\n    return s\n")
    before = delayed(func)._code.checksum
    for _ in range(200):
        func(20)
    assert delayed(func)._code.checksum == before


def test_defaults_count_and_travel_with_a_helper():
    helper = _exec_function("def helper(v, k=10, *, extra=(1, 2)):\n"
                            "    return v * k + sum(extra)\n", name="helper")
    other = _exec_function("def helper(v, k=11, *, extra=(1, 2)):\n"
                           "    return v * k + sum(extra)\n", name="helper")
    assert delayed(helper)._code.checksum != delayed(other)._code.checksum
    use = delayed(_exec_function("def use(x):\n    return helper(x) + offset\n", name="use"))
    use.globals.helper = helper
    use.globals.offset = 1
    assert use(2).run() == 24
    use.globals.helper = other
    assert use(2).run() == 26


def test_body_sees_only_the_fresh_namespace():
    func = _exec_function("import math\ndef f(x):\n    return math.sqrt(x)\n")
    root = delayed(func)
    from seamless.errors import TransformationError

    with pytest.raises(TransformationError, match="import it inside the function"):
        root(16).run()
    import math

    root.modules.math = math
    assert root(16).run() == 4.0


def test_default_that_cannot_travel_is_refused():
    ns = {"marker": object()}
    exec("def f(x, m=marker):\n    return x\n", ns)
    with pytest.raises(TypeError, match=r"^delayed\(\) cannot use f: its source cannot be read, "
                                        r"so it travels as compiled code, and the default m="):
        delayed(ns["f"])


def test_closure_is_refused_as_for_source_functions():
    ns = {}
    exec("def outer(factor):\n    def scale(x):\n        return x * factor\n"
         "    return scale\n", ns)
    with pytest.raises(TypeError, match=r"^delayed\(\) cannot use scale: it reads factor"):
        delayed(ns["outer"](2))


def test_other_python_version_is_refused_where_the_body_runs():
    code = delayed(_exec_function("def f():\n    return 1\n"))._code
    rest = code.text.split("\n", 1)[1]
    alien = code._replace(text="#seamless code object cpython-399\n" + rest)
    assert alien.kind == "code-object"
    with pytest.raises(RuntimeError, match=r"^f has no source: it was captured as compiled code "
                                           r"of cpython-399, and this process runs cpython-"):
        namespace_for(alien, {}, {}, {})
    outcome = run(Work("f", alien, (), {}, {}, {}, {}))
    assert outcome.result is None
    assert "captured as compiled code of cpython-399" in outcome.failure.summary


def test_function_with_source_keeps_its_text_checksum(tmp_path, monkeypatch):
    text = ("def triple(x):\n"
            "    # comments count for source functions\n"
            "    return 3 * x\n")
    (tmp_path / "sourced_module_for_identity.py").write_text(
        "import functools\n\n\n@functools.lru_cache\ndef unrelated():\n    return 0\n\n\n"
        "class Holder:\n    pass\n\n\n" + text)
    monkeypatch.syspath_prepend(str(tmp_path))
    import sourced_module_for_identity as module

    code = delayed(module.triple)._code
    assert isinstance(code, FunctionCode) and code.kind == "source"
    assert code.text == text
    assert code.checksum == hashlib.sha256(text.encode("utf-8")).hexdigest()
    assert delayed(module.triple)(14).run() == 42
    sys.modules.pop("sourced_module_for_identity")
