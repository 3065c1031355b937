"""direct/delayed, the handle API, identity of code and arguments, dependencies, nesting."""

from __future__ import annotations

import asyncio
import functools
import os
import subprocess
import sys
import textwrap
import threading
import time

import numpy as np
import pytest

import seamless
import seamless.config
from seamless import Checksum
from seamless.errors import TransformationCancelledError, TransformationError
from seamless.transformer import Transformation, delayed, direct


def count_lines(path) -> int:
    try:
        with open(path) as f:
            return len(f.readlines())
    except FileNotFoundError:
        return 0


@delayed
def blocked(path, n):
    """Waits until ``path`` exists: keeps a transformation running as long as a test needs."""
    import os
    import time

    while not os.path.exists(path):
        time.sleep(0.01)
    return n


@delayed
def log_and_add(logfile, a, b):
    with open(logfile, "a") as f:
        f.write("ran\n")
    return a + b


# ---------------------------------------------------------------- the two transformers


def test_delayed_returns_a_handle_and_runs_nothing(tmp_path):
    log = str(tmp_path / "log")
    h = log_and_add(log, 1, 2)
    assert isinstance(h, Transformation)
    assert h.status == "pending"
    time.sleep(0.05)
    assert count_lines(log) == 0
    assert h.run() == 3
    assert count_lines(log) == 1
    assert h.status == "done"


def test_direct_runs_and_returns_the_value():
    @direct
    def mul(x, y):
        return x * y

    assert mul(6, 7) == 42
    np.testing.assert_array_equal(mul(np.arange(4), 3), np.arange(4) * 3)


def test_direct_raises_transformation_error():
    @direct
    def explode(x):
        raise ValueError("boom")

    with pytest.raises(TransformationError) as info:
        explode(1)
    msg = str(info.value)
    assert msg.startswith("transformation explode (")
    assert "failed with ValueError: boom" in msg.splitlines()[0]
    assert 'raise ValueError("boom")' in info.value.traceback
    assert info.value.name == "explode"
    assert isinstance(info.value.checksum, Checksum)
    assert str(info.value.__cause__) == info.value.traceback


def test_transformer_keeps_function_metadata():
    def documented(x):
        """Doubles x."""
        return 2 * x

    t = delayed(documented)
    assert t.__name__ == "documented"
    assert t.__doc__ == "Doubles x."
    assert t.__wrapped__ is documented
    d = direct(t)
    assert d(4) == 8


def test_delayed_with_parentheses_is_refused():
    with pytest.raises(TypeError, match=r"delayed\(\) needs a function; write @delayed without"):
        delayed()
    with pytest.raises(TypeError, match=r"direct\(\) needs a function; write @direct without"):
        direct()


# ---------------------------------------------------------------- handle API


def test_handle_members(tmp_path):
    h = log_and_add(str(tmp_path / "log"), 2, 3)
    assert isinstance(h.checksum, Checksum) and len(h.checksum) == 64
    assert h.transformation_checksum == h.checksum
    assert h.result_checksum is None
    assert h.exception is None
    assert h.start() is h
    assert h.start() is h  # a second start does nothing
    assert h.compute() == h.result_checksum
    assert isinstance(h.result_checksum, Checksum)
    assert h.value == 5
    assert h.cancel() is False  # finished: no change
    assert h.status == "done"
    assert h.name == "log_and_add"


def test_value_while_running_raises_runtime_error(tmp_path):
    gate = tmp_path / "gate"

    @delayed
    def wait_for_gate(path):
        import os
        import time

        while not os.path.exists(path):
            time.sleep(0.01)
        return 1

    h = wait_for_gate(str(gate)).start()
    with pytest.raises(RuntimeError, match=r"^transformation wait_for_gate \([0-9a-f]{12}\) is "
                                           r"still running; call .run\(\) to wait for it, or "
                                           r"await tf.task\(\)$"):
        h.value
    gate.write_text("go")
    assert h.run() == 1


def test_failed_handle_value_exception_and_compute():
    @delayed
    def fails(x):
        raise KeyError(x)

    h = fails("k")
    assert h.compute() is None
    assert h.status == "failed"
    assert "KeyError: 'k'" in h.exception
    with pytest.raises(TransformationError, match="failed with KeyError: 'k'"):
        h.value
    with pytest.raises(TransformationError):
        h.run()
    assert h.result_checksum is None


def test_clear_exception_reexecutes(tmp_path):
    marker = tmp_path / "second-time"

    @delayed
    def flaky(path):
        import os

        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("first attempt fails")
        return "ok"

    h = flaky(str(marker))
    with pytest.raises(TransformationError, match="first attempt fails"):
        h.run()
    h.clear_exception()
    assert h.status == "pending"
    assert h.run() == "ok"


def test_failures_are_not_cached(tmp_path):
    marker = tmp_path / "m"

    @delayed
    def flaky(path):
        import os

        if not os.path.exists(path):
            open(path, "w").close()
            raise RuntimeError("once")
        return 7

    assert flaky(str(marker)).compute() is None
    assert flaky(str(marker)).run() == 7  # a new handle with the same identity executes again


def test_cancel_pending_and_running(tmp_path):
    gate = tmp_path / "gate"

    pending = blocked(str(gate), 1)
    assert pending.cancel() is True
    assert pending.status == "cancelled"
    running = blocked(str(gate), 2).start()
    assert running.cancel() is True
    with pytest.raises(TransformationCancelledError, match=r"was cancelled \(by .cancel\(\), or "
                                                           r"by parallel\(\) stopping early\)"):
        running.run()
    assert running.compute() is None
    assert "was cancelled" in running.exception
    running.start()  # terminal: nothing happens
    assert running.status == "cancelled"
    gate.write_text("go")


def test_returning_none_is_cached(tmp_path):
    log = str(tmp_path / "log")

    @delayed
    def nothing(path):
        with open(path, "a") as f:
            f.write("ran\n")

    assert nothing(log).run() is None
    assert nothing(log).run() is None
    assert count_lines(log) == 1


def test_handles_are_cached_by_identity(tmp_path):
    log = str(tmp_path / "log")
    assert log_and_add(log, 1, 1).run() == 2
    assert log_and_add(log, 1, 1).run() == 2
    assert count_lines(log) == 1
    assert log_and_add(log, 1, 2).run() == 3
    assert count_lines(log) == 2


def test_task_in_a_running_loop():
    @delayed
    def square(x):
        return x * x

    async def main():
        return await square(9).task()

    assert asyncio.run(main()) == 81


def test_task_raises_like_run():
    @delayed
    def bad(x):
        raise ValueError("nope")

    async def main():
        await bad(1).task()

    with pytest.raises(TransformationError, match="nope"):
        asyncio.run(main())


def test_task_without_loop():
    @delayed
    def one(x):
        return x

    with pytest.raises(RuntimeError, match=r"^tf.task\(\) needs a running event loop; in "
                                           r"synchronous code use tf.run\(\)$"):
        one(1).task()


def test_run_and_direct_inside_a_running_loop():
    @delayed
    def inc(x):
        return x + 1

    @direct
    def dec(x):
        return x - 1

    async def cell():
        return inc(1).run(), dec(1)

    assert asyncio.run(cell()) == (2, 0)


def test_handle_waited_on_from_many_threads(tmp_path):
    log = str(tmp_path / "log")
    h = log_and_add(log, 10, 20)
    results = []
    threads = [threading.Thread(target=lambda: results.append(h.run())) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert results == [30] * 8
    assert count_lines(log) == 1


# ---------------------------------------------------------------- arguments


def test_argument_binding_and_args_defaults():
    @delayed
    def f(a, b=2, *rest, c, d=4, **kw):
        return [a, b, rest, c, d, kw]

    assert f(1, c=3).run() == [1, 2, [], 3, 4, {}]
    assert f(1, 5, 6, 7, c=3, e=9).run() == [1, 5, [6, 7], 3, 4, {"e": 9}]
    f.args.d = 40
    f.args["c"] = 30
    assert f(1).run() == [1, 2, [], 30, 40, {}]
    assert f(1, d=0).run() == [1, 2, [], 30, 0, {}]  # call > .args > default
    del f.args.d
    assert f(1).run() == [1, 2, [], 30, 4, {}]
    with pytest.raises(TypeError, match=r"f.args has no parameter 'zz'"):
        f.args.zz = 1
    with pytest.raises(TypeError, match=r"f\(\)"):
        f()


def test_missing_argument_names_the_transformer():
    @delayed
    def needs_two(a, b):
        return a

    with pytest.raises(TypeError, match=r"needs_two\(\) missing 1 required argument: 'b'"):
        needs_two(1)


class Thing:
    pass


def test_unsupported_argument_type():
    @delayed
    def f(x):
        return x

    with pytest.raises(TypeError) as info:
        f(Thing())
    assert str(info.value) == (
        "argument 'x' of f has unsupported type Thing; supported: None, bool, int, float, "
        "complex, str, bytes, numpy arrays and scalars (not object dtype), and "
        "lists/tuples/dicts with str keys of these (pass the data, not the object)")
    with pytest.raises(TypeError, match="unsupported type set"):
        f({1, 2})
    with pytest.raises(TypeError, match="object dtype"):
        f(np.array([None, 1], dtype=object))
    with pytest.raises(TypeError, match="dict key 1"):
        f({1: "a"})


def test_transformation_inside_a_container_is_refused():
    @delayed
    def f(x):
        return x

    with pytest.raises(TypeError, match="pass it as its own argument"):
        f([f(1)])


def test_values_arrive_decoded_and_read_only():
    @delayed
    def inspect_args(t, ba, arr):
        try:
            arr[0] = 5
            writable = True
        except ValueError:
            writable = False
        return [type(t).__name__, type(ba).__name__, writable, arr.flags.c_contiguous]

    result = inspect_args((1, 2), bytearray(b"x"), np.arange(10)[::2]).run()
    assert result == ["list", "bytes", False, True]


def test_arguments_are_snapshots():
    @delayed
    def total(values):
        return float(sum(values))

    data = np.ones(10)
    h = total(data)
    data[:] = 100  # changing the caller's object after building changes nothing
    assert h.run() == 10.0


def test_array_modified_in_place_is_recomputed(tmp_path):
    log = str(tmp_path / "log")

    @delayed
    def summed(path, a):
        with open(path, "a") as f:
            f.write("ran\n")
        return float(a.sum())

    a = np.arange(5.0)
    assert summed(log, a).run() == 10.0
    a[0] = 100
    assert summed(log, a).run() == 110.0
    assert count_lines(log) == 2


def test_results_are_read_only_and_pass_on_without_rehash():
    from seamless import encoding

    @delayed
    def make(n):
        import numpy as np

        return np.arange(n, dtype=float)

    h = make(1000)
    r = h.run()
    assert r.flags.writeable is False
    with pytest.raises(ValueError):
        r.setflags(write=True)
    enc = encoding.encode(r)
    assert enc.checksum == h.result_checksum
    assert enc.buffer is h._outcome.result.buffer  # passed on as is: no copy, no re-hash
    view = r[1:]
    assert encoding.encode(view).buffer is not enc.buffer  # a view is hashed from content


# ---------------------------------------------------------------- code identity


def test_code_identity_includes_comments_but_not_decorators():
    def g(x):
        return x

    def g2(x):
        # a comment
        return x

    plain = delayed(g)(1).checksum
    assert delayed(g)(1).checksum == plain
    assert direct(delayed(g))._code.checksum == delayed(g)._code.checksum
    assert delayed(g2)(1).checksum != plain


def test_code_text_is_dedented_def_without_decorators():
    @delayed
    def inner(x):
        return x

    assert inner._code.text == "def inner(x):\n    return x\n"


def test_traceback_points_at_user_file_and_line():
    @delayed
    def explode(x):
        y = x + 1
        raise ZeroDivisionError(y)

    h = explode(1)
    h.compute()
    line = explode.__wrapped__.__code__.co_firstlineno + 3  # decorator, def, y =, raise
    assert f'File "{__file__}", line {line}, in explode' in h.exception
    assert "seamless/" not in h.exception.split("in explode")[0]


def test_system_exit_in_body_fails_only_that_transformation():
    @delayed
    def quits(x):
        import sys

        sys.exit(3)

    h = quits(1)
    with pytest.raises(TransformationError, match="failed with SystemExit: 3"):
        h.run()


@delayed
def uses_math(x):
    return math.sqrt(x)  # noqa: F821 (given by .modules; the body runs in a fresh namespace)


def _helper(v):
    return v * 10


@delayed
def use_globals(x):
    return helper(x) + scale  # noqa: F821 (given by .globals)


def test_name_error_hint():
    import math

    with pytest.raises(TransformationError) as info:
        uses_math(4).run()
    assert ("failed with NameError: name 'math' is not defined; the transformation body runs "
            "in a fresh namespace: import it inside the function or add it to .modules (values "
            "and helper functions: .globals)") in str(info.value)
    uses_math.modules.math = math
    assert uses_math(4).run() == 2.0


def test_globals_values_and_helpers():
    use = use_globals
    use.globals.helper = _helper
    use.globals["scale"] = 3
    assert use(1).run() == 13
    before = use(1).checksum
    use.globals.scale = 4
    assert use(1).checksum != before
    assert use(1).run() == 14
    with pytest.raises(TypeError, match="use .modules"):
        use.globals.np = np


def test_result_of_unsupported_type_fails():
    @delayed
    def return_lock(x):
        import threading

        return threading.Lock()

    with pytest.raises(TransformationError) as info:
        return_lock(1).run()
    first = str(info.value).splitlines()[0]
    assert first.startswith("transformation return_lock (")
    assert ("failed with TypeError: result of return_lock has unsupported type _thread.lock; "
            "supported: ") in first
    assert first.endswith("(return data, not objects)")


# ---------------------------------------------------------------- refused functions


class Model:
    def fit(self, x):
        return x

    @classmethod
    def make(cls, x):
        return x


def _closure_factory():
    factor = 3

    def scale(x):
        return x * factor

    return scale


async def _coroutine(x):
    return x


def _generator(x):
    yield x


@pytest.mark.parametrize("func, pattern", [
    (lambda x: x, r"^delayed\(\) needs a function written with def, got a lambda, which has no "
                  r"source of its own to identify it \(write `def name\(...\):` instead\)$"),
    (len, r"^delayed\(\) needs a Python function with source code, got builtin function len "
          r"\(wrap it: `def f\(x\): return len\(x\)`\)$"),
    (Model().fit, r"^delayed\(\) needs a plain function, got bound method Model.fit, whose "
                  r"result depends on its instance \(make it a module-level function and pass "
                  r"the data as arguments\)$"),
    (Model.make, r"make it a module-level function"),
    (_closure_factory(), r"^delayed\(\) cannot use scale: it reads factor from its enclosing "
                         r"function, which cannot be part of its identity \(pass factor as an "
                         r"argument, or define scale at module level and set "
                         r"scale.globals.factor\)$"),
    (_coroutine, r"write a plain function that returns the value"),
    (_generator, r"write a plain function that returns the value"),
    (functools.partial(log_and_add, "x"), r"bind fixed arguments with .args"),
    (Model, r"bind fixed arguments with .args"),
    (np.sum, r"needs a Python function with source code|source"),
])
def test_refused_callables(func, pattern):
    with pytest.raises(TypeError, match=pattern):
        delayed(func)


def test_function_without_source_runs_by_its_code_object():
    ns = {}
    exec("def made_by_exec(x):\n    return x\n", ns)
    made = delayed(ns["made_by_exec"])
    assert made._code.kind == "code-object"
    assert made(3).run() == 3


def test_function_defined_in_main_script(tmp_path):
    script = tmp_path / "script.py"
    script.write_text(textwrap.dedent("""
        from seamless.transformer import delayed

        @delayed
        def triple(x):
            return 3 * x

        print("result", triple(14).run())
    """))
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "result 42" in out.stdout


# ---------------------------------------------------------------- dependencies


def test_dependency_is_computed_first_and_feeds_its_result(tmp_path):
    log = str(tmp_path / "log")

    @delayed
    def load(n):
        import numpy as np

        return np.arange(n)

    @delayed
    def smooth(a, k):
        return float(a.sum()) * k

    a = load(10)
    b = smooth(a, 2)
    c = smooth(a, 3)
    assert b.run() == 90.0
    assert c.run() == 135.0
    assert a.status == "done"
    # b's identity uses a's result checksum: the same input content gives a cache hit
    direct_input = smooth(np.arange(10), 2)
    assert direct_input.checksum == b.checksum
    assert log_and_add(log, load(3), 1).run().tolist() == [1, 2, 3]


def test_dependency_failure_message():
    @delayed
    def load(path):
        raise OSError("disk on fire")

    @delayed
    def smooth(a, k):
        return a

    a = load("x")
    b = smooth(a, 3)
    with pytest.raises(TransformationError) as info:
        b.run()
    first = str(info.value).splitlines()[0]
    assert first.startswith("transformation smooth (")
    assert "failed: its dependency 'a' (transformation load, " in first
    assert first.endswith(") failed with OSError: disk on fire")
    assert "disk on fire" in b.exception
    with pytest.raises(TransformationError, match="dependency 'a'"):
        b.checksum


def test_cancelled_dependency():
    @delayed
    def slow(x):
        return x

    @delayed
    def after(a):
        return a

    a = slow(1)
    a.cancel()
    b = after(a)
    with pytest.raises(TransformationError, match=r"its dependency 'a' .* was cancelled"):
        b.run()


def test_checksum_of_dependent_waits_for_dependency():
    @delayed
    def one(x):
        return x + 1

    b = one(one(1))
    cs = b.checksum
    assert cs == one(2).checksum
    assert b.run() == 3


# ---------------------------------------------------------------- latch-on and nesting


@delayed
def slow_log(path, x):
    import time

    with open(path, "a") as f:
        f.write("ran\n")
    time.sleep(0.3)
    return x


def test_identical_transformations_started_together_run_once(tmp_path):
    log = str(tmp_path / "log")

    handles = [slow_log(log, 5) for _ in range(6)]
    for h in handles:
        h.start()
    assert [h.run() for h in handles] == [5] * 6
    assert count_lines(log) == 1


def test_cancel_detaches_one_latched_handle(tmp_path):
    log = str(tmp_path / "log")

    a = slow_log(log, 6).start()
    b = slow_log(log, 6).start()
    assert a.cancel()
    assert b.run() == 6
    assert a.status == "cancelled"


def test_nesting_never_deadlocks_with_one_thread():
    seamless.config.init(workers=1)

    @delayed
    def driver(n):
        from seamless.transformer import delayed

        @delayed
        def square(i):
            return i * i

        tfs = [square(i).start() for i in range(n)]
        return sum(tf.run() for tf in tfs)

    @delayed
    def outer(n):
        from seamless.transformer import delayed

        @delayed
        def driver(n):
            from seamless.transformer import delayed

            @delayed
            def square(i):
                return i * i

            return sum(square(i).run() for i in range(n))

        return driver(n).run() + 1

    assert driver(20).run() == sum(i * i for i in range(20))
    assert outer(10).run() == sum(i * i for i in range(10)) + 1


def test_local_attribute_is_not_part_of_identity():
    @delayed
    def f(x):
        return x

    before = f(1).checksum
    f.local = True
    assert f(1).checksum == before
    assert f(1).run() == 1


def test_close_cancels_queued_work(tmp_path):
    seamless.config.init(workers=1)
    gate = tmp_path / "gate"

    first = blocked(str(gate), 1).start()
    queued = blocked(str(gate), 2).start()
    time.sleep(0.1)
    seamless.close()
    assert queued.status == "cancelled"
    gate.write_text("go")
    assert first.run() == 1


def test_environment_variable_picks_thread_count_in_fresh_process(tmp_path):
    script = tmp_path / "fanout.py"
    script.write_text(textwrap.dedent("""
        import threading
        from seamless.transformer import delayed

        @delayed
        def f(x):
            import time
            time.sleep(0.05)
            return x

        hs = [f(i).start() for i in range(20)]
        [h.run() for h in hs]
        print(sum(t.name.startswith("seamless-executor") for t in threading.enumerate()))
    """))
    env = dict(os.environ, SEAMLESS_WORKERS="3")
    out = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, env=env,
                         cwd=tmp_path, timeout=120)
    assert out.returncode == 0, out.stderr
    assert int(out.stdout.strip()) == 3


# ---------------------------------------------------------------- .modules


@delayed
def use_module(x):
    return mylib.double(x)  # noqa: F821 (given by .modules)


def test_local_module_is_embedded_by_source(tmp_path, monkeypatch):
    (tmp_path / "mylib_single.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    mylib = importlib.import_module("mylib_single")
    use_module.modules.mylib = mylib
    entry = use_module._modules["mylib"]
    assert entry.mode == "source"
    assert use_module(21).run() == 42
    before = use_module(21).checksum
    (tmp_path / "mylib_single.py").write_text("def double(x):\n    return x + x  # edited\n")
    assert use_module(21).checksum != before
    assert use_module(21).run() == 42
    del use_module.modules.mylib


def test_local_package_with_submodule_is_embedded(tmp_path, monkeypatch):
    pkg = tmp_path / "mypkg_embedded"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("from .core import double\n")
    (pkg / "core.py").write_text("def double(x):\n    return 2 * x\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    use_module.modules.mylib = importlib.import_module("mypkg_embedded")
    assert use_module._modules["mylib"].mode == "source"
    assert sorted(use_module._modules["mylib"].files) == ["__init__.py", "core.py"]
    assert use_module(5).run() == 10
    del use_module.modules.mylib


def test_installed_module_is_imported_by_name_with_version():
    @delayed
    def total(x):
        return float(np.sum(x))

    total.modules.np = np
    assert total._modules["np"].mode == "import"
    assert total._modules["np"].identity == f"numpy=={np.__version__}"
    assert total([1, 2, 3]).run() == 6.0
    with pytest.raises(TypeError, match="takes module objects"):
        total.modules.np = "numpy"
