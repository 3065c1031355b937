"""The bounded word grammar of seamless-run (docs/cli.md, "What makes two runs the same"):
``seamless.shell.words``.

Pure-function tests, plus a few cross-checks that run ``/bin/bash -c "printf '%s\\0' ..."`` in
an empty ``tmp_path`` to prove that the words we find are the words bash itself passes on.
"""

from __future__ import annotations

import ast
import os
import pickle
import random
import subprocess

import pytest

import seamless.shell.words as words_module
from seamless.shell.words import (
    CommandSyntaxError,
    Split,
    Word,
    join_words,
    split_command,
    strip_future_suffixes,
)

BASH = "/bin/bash"
needs_bash = pytest.mark.skipif(not os.path.exists(BASH),
                                reason="/bin/bash is not installed: no cross-check with bash")


def texts(items):
    return [w.text for w in items]


def classify(command):
    split = split_command(command)
    return texts(split.words), texts(split.inputs), texts(split.outputs), texts(split.appends)


def bash_argvs(commands, cwd):
    """What bash passes as arguments for each of ``commands`` (one bash process; each command is
    ``eval``-ed on its own, so it ends where its text ends)."""
    script = "for c in \"$@\"; do eval \"printf '%s\\0' $c\"; printf '\\1\\0'; done"
    out = subprocess.run([BASH, "--norc", "--noprofile", "-c", script, "bash"]
                         + [os.fsencode(c) for c in commands], cwd=cwd,
                         env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"}, capture_output=True,
                         timeout=60, check=True)
    fields = [os.fsdecode(f) for f in out.stdout.split(b"\0")[:-1]]
    argvs, current = [], []
    for field in fields:
        if field == "\1":
            argvs.append(current)
            current = []
        else:
            current.append(field)
    assert len(argvs) == len(commands), out.stderr
    return argvs


# --- classification: the docs/cli.md word rules and every redirection ---------------------------

CLASSIFY = [
    # docs/cli.md, "What makes two runs the same"
    ("paste a.txt b.txt", ["paste", "a.txt", "b.txt"], [], [], []),
    ("sort <a.txt | uniq -c >counts.txt", ["sort", "uniq", "-c"], ["a.txt"], ["counts.txt"], []),
    ("cat a.txt >> log.txt", ["cat", "a.txt"], [], ["log.txt"], ["log.txt"]),
    ("grep x a.txt 2>err.txt; echo 2 > b.txt",
     ["grep", "x", "a.txt", "echo", "2"], [], ["err.txt", "b.txt"], []),
    ("tool a.txt 2>&1 &> all.log", ["tool", "a.txt"], [], ["all.log"], []),
    ('wc -l $(cat list.txt) "$F" b.txt', ["wc", "-l", "$(cat list.txt)", "$F", "b.txt"], [], [],
     []),
    # operators glued to words
    ("a>b", ["a"], [], ["b"], []),
    ("a|b", ["a", "b"], [], [], []),
    ("a;b&c&&d||e|&f;;g;&h", ["a", "b", "c", "d", "e", "f", "g", "h"], [], [], []),
    ("(cd sub; ls) >list", ["cd", "sub", "ls"], [], ["list"], []),
    ("cmd 2>err", ["cmd"], [], ["err"], []),
    ("x2>y", ["x2"], [], ["y"], []),
    ("cmd 12>y", ["cmd"], [], ["y"], []),
    ('"2">x', ["2"], [], ["x"], []),
    ("echo 2 >x", ["echo", "2"], [], ["x"], []),
    ("cmd 0<in.txt", ["cmd"], ["in.txt"], [], []),
    ("cmd <in.txt>out.txt", ["cmd"], ["in.txt"], ["out.txt"], []),
    ("cmd 2>>err", ["cmd"], [], ["err"], ["err"]),
    ("cmd &>>all", ["cmd"], [], ["all"], ["all"]),
    ("cmd &>all", ["cmd"], [], ["all"], []),
    ("cmd >|forced", ["cmd"], [], ["forced"], []),
    ("cmd <>both", ["cmd"], ["both"], ["both"], []),
    ("cmd 3<>both", ["cmd"], ["both"], ["both"], []),
    ("cmd >a >b", ["cmd"], [], ["a", "b"], []),
    ("cmd {fd}>log", ["cmd"], [], ["log"], []),
    # fd duplication names no file; `>& word` is `&> word`
    ("cmd >&2", ["cmd"], [], [], []),
    ("cmd >& 2", ["cmd"], [], [], []),
    ("cmd 1>&2", ["cmd"], [], [], []),
    ("cmd >&-", ["cmd"], [], [], []),
    ("cmd 3>&-", ["cmd"], [], [], []),
    ("cmd >&3-", ["cmd"], [], [], []),
    ("cmd <&0 <&3 <&file", ["cmd"], [], [], []),
    ("cmd 2>&file", ["cmd"], [], [], []),
    ("cmd >& out.log", ["cmd"], [], ["out.log"], []),
    ("cmd >&out.log", ["cmd"], [], ["out.log"], []),
    ("cmd >&2x", ["cmd"], [], ["2x"], []),
    ("cmd >&1>x", ["cmd"], [], ["x"], []),
    ("cmd 2>&1 | tee log.txt", ["cmd", "tee", "log.txt"], [], [], []),
    # opaque targets are not tracked
    ('cmd > "$OUT" < $IN 2>>${LOG}', ["cmd"], [], [], []),
    ("cmd > $(date).log <`ls`", ["cmd"], [], [], []),
    ("cmd >'$OUT'", ["cmd"], [], ["$OUT"], []),
    # heredocs and here-strings yield nothing
    ("cat <<EOF\na.txt\nEOF\nwc b.txt", ["cat", "wc", "b.txt"], [], [], []),
    ("cat <<'EOF' >out.txt\n$x a.txt\nEOF", ["cat"], [], ["out.txt"], []),
    ('cat <<"E O"\nx\nE O\nls', ["cat", "ls"], [], [], []),
    ("cat <<E\\OF\nx\nEOF\nls", ["cat", "ls"], [], [], []),
    ("cat <<-EOF\n\ta.txt\n\tEOF\nwc b.txt", ["cat", "wc", "b.txt"], [], [], []),
    ("cat <<EOF\n\tEOF\nc.txt\nEOF\nwc b.txt", ["cat", "wc", "b.txt"], [], [], []),
    ("cat <<A <<-B\na.txt\nA\n\tb.txt\n\tB\nwc c.txt", ["cat", "wc", "c.txt"], [], [], []),
    ("cat<<EOF;ls a.txt\nbody.txt\nEOF\nwc", ["cat", "ls", "a.txt", "wc"], [], [], []),
    ("cat <<EOF\na.txt b.txt", ["cat"], [], [], []),
    ("cat <<EOF", ["cat"], [], [], []),
    ("cat 3<<EOF >o\nx\nEOF", ["cat"], [], ["o"], []),
    ("grep x <<< a.txt b.txt", ["grep", "x", "b.txt"], [], [], []),
    ("wc <<<'a.txt' <<< \"$x\"", ["wc"], [], [], []),
    # keywords in which < and > are not redirections
    ("[[ a.txt < b.txt ]] && echo yes > c",
     ["[[", "a.txt", "b.txt", "]]", "echo", "yes"], [], ["c"], []),
    ("if [[ $x > 3 ]]; then echo; fi", ["if", "[[", "$x", "3", "]]", "then", "echo", "fi"], [], [],
     []),
    ("! [[ a>b ]]", ["!", "[[", "a", "b", "]]"], [], [], []),
    ("echo [[ a > b", ["echo", "[[", "a"], [], ["b"], []),
    ("'[[' a > b", ["[[", "a"], [], ["b"], []),
    ("(( x > 3 )) && echo > y", ["(( x > 3 ))", "echo"], [], ["y"], []),
    ("for ((i=0; i<3; i++)); do echo $i; done", ["for", "((i=0; i<3; i++))", "do", "echo", "$i",
                                                  "done"], [], [], []),
    # process substitution is part of a word
    ("diff <(sort a.txt) >(cat) b.txt", ["diff", "<(sort a.txt)", ">(cat)", "b.txt"], [], [], []),
    ("echo a<(true)b", ["echo", "a<(true)b"], [], [], []),
]


@pytest.mark.parametrize("command, words, inputs, outputs, appends", CLASSIFY)
def test_classification(command, words, inputs, outputs, appends):
    assert classify(command) == (words, inputs, outputs, appends)


def test_cli_table_opaque_words():
    split = split_command('wc -l $(cat list.txt) "$F" b.txt')
    assert [w.opaque for w in split.words] == [False, False, True, True, False]


def test_targets_carry_their_raw_spans():
    text = "sort < 'my in.txt' >>\"out put\""
    split = split_command(text)
    (source,), (target,) = split.inputs, split.outputs
    assert text[source.start:source.end] == "'my in.txt'"
    assert text[target.start:target.end] == '"out put"'
    assert split.appends == [target]


# --- words: quotes, escapes, comments ------------------------------------------------------------

QUOTING = [
    ("a 'b c' \"d e\"", ["a", "b c", "d e"]),
    ("'a'\"b\"c", ["abc"]),
    ("a\\ b", ["a b"]),
    ('"a\\"b"', ['a"b']),
    ('"a\\nb"', ["a\\nb"]),
    ("'a\\b'", ["a\\b"]),
    ("'it'\\''s'", ["it's"]),
    ("a\\\nb", ["ab"]),
    ("a \\\n b", ["a", "b"]),
    ('"a\\\nb"', ["ab"]),
    ("'a\nb'", ["a\nb"]),
    ('"\\$x \\` \\\\ \\a"', ["$x ` \\ \\a"]),
    ("'' \"\" x", ["", "", "x"]),
    ("a#b #c d", ["a#b"]),
    ("a # c\nb", ["a", "b"]),
    ("x\\#y '#z'", ["x#y", "#z"]),
    ("-n --flag=1 - --", ["-n", "--flag=1", "-", "--"]),
    ("'my file.txt' my\\ file2.txt", ["my file.txt", "my file2.txt"]),
    ("a\tb\t\tc", ["a", "b", "c"]),
    ("a\\", ["a\\"]),
    ("\\'a \\\"b", ["'a", '"b']),
    ("caf\u00e9 \u00fcber", ["caf\u00e9", "\u00fcber"]),
    ("'*.txt' \\?x", ["*.txt", "?x"]),
    ("\\$HOME '$HOME' a$ $ \"$\" \"a$\"", ["$HOME", "$HOME", "a$", "$", "$", "a$"]),
]


@pytest.mark.parametrize("command, expected", QUOTING)
def test_quotes_and_escapes(command, expected):
    split = split_command(command)
    assert texts(split.words) == expected
    assert not any(w.opaque for w in split.words)


@needs_bash
def test_quoting_matches_bash(tmp_path):
    commands = [c for c, _ in QUOTING if c != "a # c\nb"]  # that one is two commands to bash
    assert bash_argvs(commands, tmp_path) == [texts(split_command(c).words) for c in commands]


WORD_ALPHABET = list("aZ0 \t'\"\\#*?=%$-/.{},~:") + ["\u00e9", "\udce9", "=~", "a=", "{a,b}",
                                                      "{1..2}"]


def _random_texts(alphabet, count, seed):
    rng = random.Random(seed)
    return ["".join(rng.choice(alphabet) for _ in range(rng.randrange(1, 14)))
            for _ in range(count)]


@needs_bash
def test_random_words_split_like_bash(tmp_path):
    """Random texts of word characters: whatever we call a plain word (neither opaque nor a
    pattern), bash passes on as exactly that word."""
    cases = []
    for text in _random_texts(WORD_ALPHABET, 3000, seed=5):
        try:
            split = split_command(text)
        except CommandSyntaxError:
            continue
        if split.words and not any(w.opaque or w.glob for w in split.words):
            cases.append((text, texts(split.words)))
    assert len(cases) > 500
    assert bash_argvs([c for c, _ in cases], tmp_path) == [w for _, w in cases]


def test_random_texts_split_or_raise_a_syntax_error():
    alphabet = WORD_ALPHABET + list("\n|&;()<>`[]") + ["<<", "<<-", "EOF", "\nEOF\n", "$(", "${",
                                                        "((", "2>", ">&", "[[", "]]", "<(", "$'"]
    for text in _random_texts(alphabet, 5000, seed=9):
        try:
            split = split_command(text)
        except CommandSyntaxError as error:
            assert 0 <= error.offset < len(text), text
            continue
        for word in split.words + split.inputs + split.outputs:
            assert 0 <= word.start < word.end <= len(text), (text, word)


def test_comment_runs_to_the_end_of_its_line_only():
    assert classify("cat a.txt # > out.txt\nwc b.txt >c") == (
        ["cat", "a.txt", "wc", "b.txt"], [], ["c"], [])
    assert classify("echo a;#x > y") == (["echo", "a"], [], [], [])


def test_word_offsets_are_raw_spans():
    text = "cat  'a b'\tc\\ d \"e\"f"
    split = split_command(text)
    assert [(w.text, text[w.start:w.end]) for w in split.words] == [
        ("cat", "cat"), ("a b", "'a b'"), ("c d", "c\\ d"), ("ef", '"e"f')]


def test_glob_flag_marks_unquoted_patterns_only():
    split = split_command("ls *.txt 'q*' a?b \\* [ab]c \"[x]\"")
    assert [(w.text, w.glob) for w in split.words] == [
        ("ls", False), ("*.txt", True), ("q*", False), ("a?b", True), ("*", False),
        ("[ab]c", True), ("[x]", False)]


# --- opaque words: expansions and substitutions --------------------------------------------------

OPAQUE = [
    ("echo $(cat $(ls a.txt) \"b)\" ')' \\) ) c.txt", ["echo", None, "c.txt"]),
    ("echo $(echo \"$(echo ')')\") x", ["echo", None, "x"]),
    ("echo $(# a comment with )\n) x", ["echo", None, "x"]),
    ("echo `cat a.txt` b.txt", ["echo", None, "b.txt"]),
    ("echo x`cat \\$HOME a.txt`y z", ["echo", None, "z"]),
    ('echo "pre $(cat a) post" z', ["echo", None, "z"]),
    ('echo "`cat a`" z', ["echo", None, "z"]),
    ("echo $((1 + (2 * 3))) a", ["echo", None, "a"]),
    ("echo ${x:-a b} c", ["echo", None, "c"]),
    ('echo "${x:-a b}" c', ["echo", None, "c"]),
    ("echo ${x:-$(echo })} c", ["echo", None, "c"]),
    ("echo $'a\\'b c' d", ["echo", None, "d"]),
    ('echo $"msg here" d', ["echo", None, "d"]),
    ("echo $1 $@ $# $? $$ $! $_x", ["echo", None, None, None, None, None, None, None]),
    ("echo pre$HOME/x", ["echo", None]),
    ("ls ~/data ~ a~b '~'/x \\~", ["ls", None, None, "a~b", "~/x", "~"]),
    ("env x=~/a P=/b:~/bin a=b=~ --p=~/x x='~' 1=~", ["env", None, None, "a=b=~", "--p=~/x", "x=~",
                                                    "1=~"]),
    ("cat {a,b}.txt x{1..3} {x} '{a,b}' {fd} \\{a,b}", ["cat", None, None, "{x}", "{a,b}", "{fd}",
                                                      "{a,b}"]),
]


@pytest.mark.parametrize("command, expected", OPAQUE)
def test_expansions_make_their_word_opaque(command, expected):
    split = split_command(command)
    assert [None if w.opaque else w.text for w in split.words] == expected
    assert not split.inputs and not split.outputs


def test_substitution_inside_yields_no_words_and_is_kept_as_written():
    text = "wc -l $(cat  'list.txt') b.txt"
    (_, _, sub, _) = split_command(text).words
    assert sub.text == "$(cat  'list.txt')" and text[sub.start:sub.end] == sub.text


def test_redirections_inside_substitutions_are_not_ours():
    assert classify("echo $(cat <a.txt >b.txt) `sort >c.txt` <(tee d.txt >e)") == (
        ["echo", "$(cat <a.txt >b.txt)", "`sort >c.txt`", "<(tee d.txt >e)"], [], [], [])


# --- non-UTF-8 names -----------------------------------------------------------------------------

def test_surrogate_escapes_survive_unchanged():
    name = os.fsdecode(b"caf\xe9 \xff.txt")
    out = os.fsdecode(b"out\xfe")
    plain = os.fsdecode(b"raw\xe9.txt")
    split = split_command(f"cat {join_words([name])} {plain} > {out}")
    assert texts(split.words) == ["cat", name, plain]
    assert texts(split.outputs) == [out]


@needs_bash
def test_surrogate_words_reach_bash_as_the_original_bytes(tmp_path):
    names = [os.fsdecode(b"caf\xe9 \xff.txt"), os.fsdecode(b"\x80'\x81"), "-n", "a b"]
    commands = [join_words(names), os.fsdecode(b"raw\xe9\xfe.txt")]
    assert bash_argvs(commands, tmp_path) == [names, [os.fsdecode(b"raw\xe9\xfe.txt")]]


# --- join_words and the round trip ---------------------------------------------------------------

@pytest.mark.parametrize("argv, text", [
    (["paste", "a.txt", "b.txt"], "paste a.txt b.txt"),
    (["bash", "-c", "exit 3"], "bash -c 'exit 3'"),
    (["|"], "'|'"),
    ([""], "''"),
    (["it's"], "'it'\"'\"'s'"),
    (["-n", "--x=1", "a/b.c", "u@h:%+,"], "-n --x=1 a/b.c u@h:%+,"),
    (["$HOME", "*.txt", "~"], "'$HOME' '*.txt' '~'"),
    ([], ""),
])
def test_join_words(argv, text):
    assert join_words(argv) == text


def test_join_of_separate_words_equals_the_one_string_form():
    assert split_command(join_words(["paste", "a.txt", "b.txt"])) == split_command(
        "paste a.txt b.txt")


def test_join_words_refuses_bytes():
    with pytest.raises(TypeError, match="os.fsdecode"):
        join_words(["cat", b"a.txt"])


ROUND_TRIP = [
    ["a"], ["a b"], [""], ["", ""], ["|"], ["||", "&&", ";", ";;", "&", "(", ")"],
    [">", "<", ">>", "2>&1", "&>", "<<EOF", "<<<", "2>err"], ["#", "#x", "a#b"],
    ["'"], ['"'], ["\\"], ["\\\n"], ["a\nb"], ["\t"], ["$HOME", "${x}", "$(ls)", "`ls`", "$'x'"],
    ["*", "?", "[a]", "{a,b}", "~", "!"], ["[[", "]]", "((x))", "<(x)"],
    ["x.FUTURE", "-", "--", "-rf"], [os.fsdecode(b"\xff\xfe"), "caf\u00e9", "\x01\x7f"],
    ["it's", 'say "hi"', "a'b\"c\\d"], ["if", "then", "fi", "FOO=bar"],
]
ALPHABET = ["a", "Z", "0", "7", "-", ".", "/", "_", " ", "\t", "\n", "'", '"', "\\", "$", "`",
            "|", "&", ";", "(", ")", "<", ">", "#", "*", "?", "[", "]", "{", "}", "~", "!", "=",
            "%", "\u00e9", "\udce9", "\x01"]


def _random_argvs(count, seed=7):
    rng = random.Random(seed)
    return [["".join(rng.choice(ALPHABET) for _ in range(rng.randrange(0, 8)))
             for _ in range(rng.randrange(1, 5))] for _ in range(count)]


@pytest.mark.parametrize("argv", ROUND_TRIP + _random_argvs(400))
def test_split_of_join_gives_back_the_words(argv):
    split = split_command(join_words(argv))
    assert texts(split.words) == argv
    assert not any(w.opaque or w.glob for w in split.words)
    assert not split.inputs and not split.outputs


@needs_bash
def test_bash_sees_the_joined_words(tmp_path):
    argvs = [[w for w in argv if "\0" not in w] for argv in ROUND_TRIP + _random_argvs(60, 11)]
    assert bash_argvs([join_words(argv) for argv in argvs], tmp_path) == argvs


# --- strip_future_suffixes -----------------------------------------------------------------------

def _futures(text):
    return [w for w in split_command(text).words if w.text.endswith(".FUTURE")]


@pytest.mark.parametrize("text, expected", [
    ("paste a.txt.FUTURE b.txt", "paste a.txt b.txt"),
    ("\"x y.FUTURE\" 'z.FUTURE' w.FUTURE", "\"x y\" 'z' w"),
    ("cat a.FUTURE  |  sort\tb.FUTURE>out", "cat a  |  sort\tb>out"),
    ("cat ''x.FUTURE''", "cat ''x''"),
    ("cat x.FUTU'RE'", "cat x"),
    ("cat x\\.FUTURE", "cat x"),
    ("cat 'a b'.FUTURE", "cat 'a b'"),
    ('cat "$D/x.FUTURE"', 'cat "$D/x"'),
    ("cat x.FUTURE.FUTURE", "cat x.FUTURE"),
    ("cat 2.FUTURE>out {fd}.FUTURE<in 3.FUTURE >x", "cat '2'>out '{fd}'<in 3 >x"),
])
def test_strip_future_suffixes(text, expected):
    result = strip_future_suffixes(text, _futures(text))
    assert result == expected
    before, after = split_command(text), split_command(result)
    assert texts(after.words) == [w.text.removesuffix(".FUTURE") for w in before.words]
    assert (texts(after.inputs), texts(after.outputs)) == (texts(before.inputs),
                                                           texts(before.outputs))


def test_strip_future_suffixes_only_touches_the_given_words():
    text = "cat a.FUTURE b.FUTURE"
    first = split_command(text).words[1]
    assert strip_future_suffixes(text, [first]) == "cat a b.FUTURE"
    assert strip_future_suffixes(text, []) == text


def test_strip_future_suffixes_keeps_surrogates():
    name = os.fsdecode(b"d\xe9 \xff")
    text = f"wc {join_words([name + '.FUTURE'])} > out"
    assert strip_future_suffixes(text, _futures(text)) == f"wc {join_words([name])} > out"


@pytest.mark.parametrize("text", ["cat a.txt", "cat .FUTURE"])
def test_strip_future_suffixes_refuses_other_words(text):
    with pytest.raises(ValueError, match="is not X.FUTURE"):
        strip_future_suffixes(text, [split_command(text).words[1]])


def test_strip_future_suffixes_refuses_to_requote_an_opaque_word():
    text = "cat $D/x.FUTU'RE'"
    with pytest.raises(ValueError, match="write the suffix unquoted"):
        strip_future_suffixes(text, _futures(text))


# --- syntax errors -------------------------------------------------------------------------------

@pytest.mark.parametrize("text, what, offset", [
    ("echo 'abc", "single quote", 5),
    ('echo "abc', "double quote", 5),
    ("echo $(cat a", "$( substitution", 5),
    ("echo a$(cat $(ls)", "$( substitution", 6),
    ("echo `cat", "backquote substitution", 5),
    ("echo ${x", "${ expansion", 5),
    ("echo $((1+2)", "$(( arithmetic expansion", 5),
    ("diff <(sort a", "<( process substitution", 5),
    ("echo $'a", "$' quote", 5),
    ("(( x > 3 )", "(( arithmetic command", 0),
    ("echo \"$(echo 'x)\"", "single quote", 13),
    ("echo \"${x:-it's}\"", "single quote", 13),
])
def test_unterminated_constructs(text, what, offset):
    with pytest.raises(CommandSyntaxError) as info:
        split_command(text)
    assert str(info.value) == f"unterminated {what} starting at offset {offset} of the command"
    assert info.value.offset == offset


@pytest.mark.parametrize("text, op, offset", [
    ("cat >", ">", 4), ("cat > | wc", ">", 4), ("cat <<\nx", "<<", 4), ("echo a 2>", ">", 8),
    ("cat <;", "<", 4), ("cmd >&", ">&", 4),
])
def test_redirection_without_target(text, op, offset):
    with pytest.raises(CommandSyntaxError, match=f"redirection '{op}' at offset {offset} of the "
                                                 f"command has no target") as info:
        split_command(text)
    assert info.value.offset == offset


def test_syntax_error_is_a_value_error_that_pickles():
    error = CommandSyntaxError("unterminated single quote starting at offset 3 of the command", 3)
    assert isinstance(error, ValueError)
    copy = pickle.loads(pickle.dumps(error))
    assert (str(copy), copy.offset) == (str(error), 3)


def test_split_command_refuses_bytes():
    with pytest.raises(TypeError, match="os.fsdecode"):
        split_command(b"cat a")


# --- the records and the module ------------------------------------------------------------------

def test_records_are_read_only_values():
    word = Word("a", 0, 1)
    assert word == Word("a", 0, 1, opaque=False, glob=False) and word != Word("a", 0, 1, True)
    assert hash(word) == hash(Word("a", 0, 1))
    assert pickle.loads(pickle.dumps(word)) == word
    with pytest.raises(AttributeError, match="read-only"):
        word.text = "b"
    split = split_command("cat a >b")
    assert split == Split([Word("cat", 0, 3), Word("a", 4, 5)], [], [Word("b", 7, 8)], [])
    assert pickle.loads(pickle.dumps(split)) == split
    assert "Word(text='cat'" in repr(split)
    with pytest.raises(AttributeError, match="read-only"):
        split.words = []


def test_module_imports_nothing_at_module_level():
    """The grammar is on seamless-run's cache-hit path: it must cost next to nothing to import."""
    with open(words_module.__file__, encoding="utf-8") as f:
        tree = ast.parse(f.read())
    imported = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
    assert [getattr(node, "module", None) for node in imported] == ["__future__"]
