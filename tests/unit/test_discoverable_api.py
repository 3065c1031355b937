"""`import seamless` offers the API of seamless.transformer, lazily, whatever the import order."""

import subprocess
import sys

import pytest

API = ("direct", "delayed", "spawn", "has_spawned", "parallel", "parallel_async",
       "TransformationList", "Transformation")


def _run(code: str) -> str:
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    return done.stdout


@pytest.mark.parametrize("first", [
    "import seamless",
    "import seamless.transformer",
    "import seamless.batches",
    "from seamless.transformer import parallel",
    "import seamless.execution.dispatch",
])
def test_names_are_the_transformer_functions_whatever_was_imported_first(first):
    out = _run(f"""{first}
import seamless, seamless.transformer as t
for name in {API!r}:
    assert getattr(seamless, name) is getattr(t, name), name
print("same")""")
    assert out.strip() == "same"


def test_import_seamless_stays_light():
    out = _run("import sys, seamless\n"
               "print(sorted(m for m in ('numpy', 'seamless.transformer', 'seamless._ipc')"
               " if m in sys.modules))")
    assert out.strip() == "[]"


def test_help_starts_with_an_example_and_the_docs():
    import seamless

    head = seamless.__doc__.splitlines()[:16]
    text = "\n".join(head)
    assert "from seamless import delayed, spawn, parallel" in text
    assert "@delayed" in text and ".run()" in text
    assert "docs/index.md" in "\n".join(seamless.__doc__.splitlines()[:20])


def test_dir_shows_the_api_not_the_imports():
    import seamless
    import seamless.transformer as t

    assert set(dir(t)) == set(t.__all__)
    assert "functools" not in dir(t) and "inspect" not in dir(t)
    assert set(API) <= set(dir(seamless))


def test_unknown_attribute_names_the_module():
    import seamless

    with pytest.raises(AttributeError, match="no attribute 'spwan'"):
        seamless.spwan
