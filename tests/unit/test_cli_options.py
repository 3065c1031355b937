"""seamless-run's fast option scan agrees with argparse wherever it answers (cli/options.py)."""

from __future__ import annotations

import pytest

from seamless.cli.options import RunOptions, build_parser, scan

ARGVS = [
    ["echo", "hi"],
    ["-v", "paste", "a", "b"],
    ["-q", "--no-cache", "--no-sandbox", "true"],
    ["-i", "x.txt", "-c", "out", "cat x.txt > out"],
    ["--input", "x", "--capture", "y", "--var", "A=1", "cmd"],
    ["--input=x", "--capture=y", "--var=B", "cmd", "-v", "--", "z"],
    ["--", "-weird", "arg"],
    ["-v", "--", "ls"],
    ["ls", "-l", "-i", "x"],
    ["-", "x"],
    ["", "x"],
    ["-i", "-x", "cmd"],        # a value that looks like an option: argparse decides
    ["-vq", "cmd"],             # bundled flags
    ["--no-s", "cmd"],          # abbreviation
    ["--verb", "cmd"],
    ["-ifile", "cmd"],
    ["--frob", "cmd"],
    ["-i"],
    ["--input="],
    [],
]


def _argparse(argv):
    try:
        return vars(build_parser().parse_args(argv))
    except SystemExit as e:
        return ("exit", e.code)


@pytest.mark.parametrize("argv", ARGVS, ids=[" ".join(a) or "empty" for a in ARGVS])
def test_scan_agrees_with_argparse(argv, capsys):
    fast = scan(argv)
    if fast is not None:
        assert fast == _argparse(argv)
    capsys.readouterr()


def test_scan_answers_the_usual_shapes():
    assert scan(["-v", "-i", "a", "cat", "a"]) is not None
    assert scan(["--var=X", "--no-cache", "true"]) is not None
    assert scan(["-h"]) is None and scan(["--version"]) is None


def test_run_options_joins_words_and_drops_the_separator():
    opts = RunOptions(["-v", "--", "bash", "-c", "exit 3"])
    assert opts.text == "bash -c 'exit 3'" and opts.verbose
    assert RunOptions(["paste a b"]).text == "paste a b"


@pytest.mark.parametrize("argv, message", [
    ([], "no command given"),
    (["   "], "the command is empty"),
    (["--var", "1BAD=x", "true"], "is not an environment variable name"),
])
def test_usage_errors_exit_2(argv, message, capsys):
    with pytest.raises(SystemExit) as e:
        RunOptions(argv)
    assert e.value.code == 2
    assert message in capsys.readouterr().err
