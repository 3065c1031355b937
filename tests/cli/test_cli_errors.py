"""Every command reports a ``SeamlessError`` (a bad seamless.yaml here) as one
``<prog>: error: ...`` line with exit 1; the traceback comes only with ``seamless-run -v``
(docs/cli.md, docs/configuration.md)."""

from __future__ import annotations

import pytest


def err(proc) -> str:
    return proc.stderr.decode()


@pytest.fixture
def bad_yaml(cli):
    """A project file with a misspelled key, and no SEAMLESS_CACHE so the commands read it."""
    (cli.work / "seamless.yaml").write_text("- workrs: 2\n")
    del cli.env["SEAMLESS_CACHE"]
    return cli


EXPECTED = ("seamless.yaml, line 1: unknown key 'workrs'; did you mean 'workers'? (accepted "
            "keys: cache, cache_max, execution, inherit_from_parent, memory_cache, nparallel, "
            "scheduler, workers)")


def test_seamless_run_one_line(bad_yaml):
    proc = bad_yaml.run("seamless-run", "echo", "hi", check=1)
    assert err(proc) == f"seamless-run: error: {EXPECTED}\n"
    assert proc.stdout == b""


def test_seamless_run_verbose_shows_the_traceback(bad_yaml):
    proc = bad_yaml.run("seamless-run", "-v", "echo", "hi", check=1)
    lines = err(proc).splitlines()
    assert "Traceback (most recent call last):" in lines
    assert lines[-1] == f"seamless-run: error: {EXPECTED}"


def test_seamless_run_verbose_of_the_command_is_not_ours(bad_yaml):
    """``-v`` after the command word belongs to the command."""
    proc = bad_yaml.run("seamless-run", "echo", "-v", check=1)
    assert err(proc) == f"seamless-run: error: {EXPECTED}\n"


def test_missing_colon(cli):
    (cli.work / "seamless.yaml").write_text("- nparallel 4\n")
    del cli.env["SEAMLESS_CACHE"]
    proc = cli.run("seamless-run", "echo", "hi", check=1)
    assert err(proc) == ("seamless-run: error: seamless.yaml, line 1: '- nparallel 4' lacks the "
                         "colon after the key; write '- nparallel: 4' (YAML reads "
                         "'nparallel 4' as one word)\n")


def test_seamless_cache_one_line(bad_yaml):
    proc = bad_yaml.run("seamless-cache", "stats", check=1)
    assert err(proc) == f"seamless-cache: error: {EXPECTED} (or pass --cache DIR)\n"


def test_seamless_run_qsubmit_one_line(bad_yaml):
    """--qsubmit reads the cache directory before looking for a server."""
    proc = bad_yaml.run("seamless-run", "--qsubmit", "echo", "hi", check=1)
    message = err(proc)
    assert "Traceback" not in message
    assert message.startswith("seamless-run: error: ")
    assert len(message.splitlines()) == 1


def test_run_main_reports_any_seamless_error(capsys):
    """The central handler: a SeamlessError from any command's main is one line, exit 1;
    other exceptions are bugs and keep their traceback."""
    from seamless.cli.common import run_main
    from seamless.errors import CacheError, QueueError

    def failing(exc):
        def main(argv):
            raise exc
        return main

    assert run_main("seamless-queue", failing(QueueError("the queue is gone")), []) == 1
    assert capsys.readouterr().err == "seamless-queue: error: the queue is gone\n"
    assert run_main("seamless-cache", failing(CacheError("disk full")), []) == 1
    assert capsys.readouterr().err == "seamless-cache: error: disk full\n"
    with pytest.raises(ZeroDivisionError):
        run_main("seamless-queue", failing(ZeroDivisionError("bug")), [])


def test_a_command_given_to_c_is_explained(cli):
    """Upstream habit: `seamless-run -c "CMD"` names the command where an output path goes."""
    proc = cli.run("seamless-run", "-c", "paste a.txt b.txt", check=2)
    assert proc.returncode == 2
    assert (b"-c takes an output path, not a command (-c 'paste a.txt b.txt'): put the command "
            b"after the options, e.g. seamless-run 'paste a.txt b.txt'") in proc.stderr
    plain = cli.run("seamless-run", "-c", "out.txt", check=2)
    assert plain.returncode == 2 and b"no command given (example:" in plain.stderr
