"""Catch what the body raised: the error of a failed transformation is also an instance of the
body's exception class when the caller can import it, in-process and on the worker pool; the
remote traceback and the captured output are shown once."""

from __future__ import annotations

import json
import pickle
import traceback

import pytest

from seamless.errors import TransformationCancelledError, TransformationError, WorkerCrashedError
from seamless.transformer import delayed, spawn

pytestmark = pytest.mark.integration


@pytest.fixture(params=["process", "spawn"])
def mode(request):
    if request.param == "spawn":
        spawn(1)
    return request.param


@delayed
def lookup(key):
    print("looking up", key)
    return {"a": 1}[key]


@delayed
def parse(text):
    import json

    return json.loads(text)


@delayed
def opens(path):
    with open(path) as f:
        return f.read()


@delayed
def raises_local_class(x):
    class Oops(Exception):
        pass

    raise Oops(f"oops {x}")


@delayed
def exits(code):
    import sys

    sys.exit(code)


@delayed
def passes_on(value):
    return value


def _display(err) -> str:
    return "".join(traceback.format_exception(err))


def test_except_the_original_class(mode):
    with pytest.raises(KeyError) as info:
        lookup("b").run()
    err = info.value
    assert isinstance(err, TransformationError) and isinstance(err, RuntimeError)
    assert type(err).__name__ == "TransformationError[KeyError]"
    assert err.exception_type == "KeyError"
    assert str(err).startswith("transformation lookup (")
    assert str(err).endswith("failed with KeyError: 'b'")
    assert "return {\"a\": 1}[key]" in err.traceback


def test_the_remote_traceback_and_output_are_shown_once(mode):
    with pytest.raises(TransformationError) as info:
        lookup("c").run()
    shown = _display(info.value)
    assert shown.count('return {"a": 1}[key]') == 1
    assert shown.count("KeyError: 'c'") == 2  # the body's line and our summary line
    assert shown.count("looking up c") == (1 if mode == "spawn" else 0)
    assert shown.count("--- captured stdout") == (1 if mode == "spawn" else 0)


def test_an_importable_class_from_a_module(mode):
    with pytest.raises(json.JSONDecodeError) as info:
        parse("{not json").run()
    assert info.value.exception_type == "json.decoder.JSONDecodeError"
    with pytest.raises(FileNotFoundError) as info:
        opens("/nonexistent/seamless-test-file").run()
    assert isinstance(info.value, OSError) and info.value.exception_type == "FileNotFoundError"


def test_a_class_the_caller_cannot_import_stays_a_transformation_error(mode):
    with pytest.raises(TransformationError) as info:
        raises_local_class(1).run()
    err = info.value
    assert type(err) is TransformationError
    assert err.exception_type.endswith("raises_local_class.<locals>.Oops")
    assert "oops 1" in str(err)


def test_system_exit_in_a_body_is_not_re_raised_as_system_exit(mode):
    with pytest.raises(TransformationError) as info:
        exits(4).run()
    assert type(info.value) is TransformationError
    assert info.value.exception_type == "SystemExit"


def test_a_dependent_fails_with_the_class_of_its_dependency(mode):
    with pytest.raises(KeyError) as info:
        passes_on(lookup("d")).run()
    assert "its dependency 'value'" in str(info.value)
    assert info.value.exception_type == "KeyError"


def test_nested_failure_keeps_the_innermost_class(mode):
    @delayed
    def outer(text):
        from seamless.transformer import delayed

        @delayed
        def inner(t):
            import json

            return json.loads(t)

        return inner(text).run()

    with pytest.raises(json.JSONDecodeError) as info:
        outer("{bad").run()
    assert info.value.exception_type == "json.decoder.JSONDecodeError"


def test_the_error_pickles_as_the_same_generated_class(mode):
    with pytest.raises(KeyError) as info:
        lookup("e").run()
    back = pickle.loads(pickle.dumps(info.value))
    assert type(back) is type(info.value)
    assert (str(back), back.exception_type, back.traceback) == \
        (str(info.value), "KeyError", info.value.traceback)


def test_exception_type_of_a_cancelled_handle(mode):
    h = lookup("a")
    h.cancel()
    with pytest.raises(TransformationCancelledError) as info:
        h.run()
    assert info.value.exception_type == "seamless.errors.TransformationCancelledError"


def test_exception_type_of_a_crash():
    spawn(1)

    @delayed
    def crash(x):
        import os

        os._exit(3)

    with pytest.raises(WorkerCrashedError) as info:
        crash(1).run()
    err = info.value
    assert err.exception_type == "seamless.errors.WorkerCrashedError"
    shown = _display(err)
    assert shown.count("exited with code 3 while running it") == 2  # cause, then summary
