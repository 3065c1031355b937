"""The exception hierarchy of docs/design/errors.md, "The hierarchy": stdlib bases, attributes,
pickling."""

from __future__ import annotations

import pickle

import pytest

from seamless import errors as E


@pytest.mark.parametrize("cls, bases", [
    (E.ConfigurationError, (E.SeamlessError, ValueError)),
    (E.TransformationError, (E.SeamlessError, RuntimeError)),
    (E.WorkerCrashedError, (E.TransformationError,)),
    (E.TransformationCancelledError, (E.TransformationError,)),
    (E.SharedMemoryError, (E.SeamlessError, MemoryError)),
    (E.CacheError, (E.SeamlessError, OSError)),
    (E.QueueError, (E.SeamlessError,)),
    (E.CacheWarning, (E.SeamlessWarning, UserWarning)),
    (E.BackendWarning, (E.SeamlessWarning, UserWarning)),
])
def test_hierarchy(cls, bases):
    for base in bases:
        assert issubclass(cls, base)


@pytest.mark.parametrize("exc, attrs", [
    (E.ConfigurationError("seamless.yaml, line 2: unknown key 'x'", source="/p/seamless.yaml",
                          line=2, key="x", value=1),
     dict(source="/p/seamless.yaml", line=2, key="x", value=1)),
    (E.TransformationError("transformation f (3fa2c1d09b7e) failed with ValueError: boom",
                           checksum="a" * 64, traceback="tb", name="f", index=3),
     dict(checksum="a" * 64, traceback="tb", name="f", index=3)),
    (E.WorkerCrashedError("crashed", exitcode=3, signal=None, pid=12, name="f"),
     dict(exitcode=3, signal=None, pid=12, name="f")),
    (E.TransformationCancelledError("cancelled", name="f"), dict(name="f")),
    (E.SharedMemoryError("could not allocate", size=4096), dict(size=4096)),
    (E.CacheError("cache directory /x is not writable", 13, "Permission denied", "/x"),
     dict(errno=13, strerror="Permission denied", filename="/x")),
    (E.QueueError("no seamless-queue server"), {}),
])
def test_pickles_with_attributes(exc, attrs):
    back = pickle.loads(pickle.dumps(exc))
    assert type(back) is type(exc)
    assert str(back) == str(exc)
    for name, value in attrs.items():
        assert getattr(back, name) == value


def test_cache_error_message_replaces_errno_text():
    err = E.CacheError("cache directory /d is not writable ([Errno 30] Read-only file system); "
                       "set SEAMLESS_CACHE to a writable directory", 30, "Read-only file system",
                       "/d")
    assert str(err).startswith("cache directory /d is not writable")
    assert isinstance(err, OSError) and err.errno == 30


def test_exception_type_defaults_to_the_error_class():
    assert E.TransformationError("x").exception_type == "seamless.errors.TransformationError"
    assert E.WorkerCrashedError("x").exception_type == "seamless.errors.WorkerCrashedError"


@pytest.mark.parametrize("name, base", [("KeyError", KeyError), ("OSError", OSError),
                                        ("json.decoder.JSONDecodeError", ValueError)])
def test_error_class_mixes_in_an_importable_class(name, base):
    cls = E.error_class(name)
    assert issubclass(cls, E.TransformationError) and issubclass(cls, base)
    assert E.error_class(name) is cls  # made once
    err = cls("transformation f (3fa2c1d09b7e) failed with KeyError: 'k'", exception_type=name)
    assert str(err) == "transformation f (3fa2c1d09b7e) failed with KeyError: 'k'"


@pytest.mark.parametrize("name", [None, "SystemExit", "KeyboardInterrupt", "ExceptionGroup",
                                  "no_such_module.Error", "__main__.f.<locals>.Oops",
                                  "seamless.errors.WorkerCrashedError", "json.dumps"])
def test_error_class_falls_back_to_transformation_error(name):
    assert E.error_class(name) is E.TransformationError
