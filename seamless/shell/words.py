"""Split a bash command text into words and redirections without running bash (docs/cli.md).

``seamless-run`` must know, before it runs ``/bin/bash -c TEXT``, which words of the command may
name input files and which files its redirections write. This module answers with a bounded
grammar: a small scanner (a state machine over the text) that follows bash's quoting rules for
ordinary words and recognises the operators and redirections, and a classifier that sorts the
tokens into argument words, inputs and outputs. It never expands anything: whatever bash would
expand at run time is *opaque* (never an input, never an output).

Data flow: pure functions over one ``str`` (non-UTF-8 bytes arrive as surrogate escapes,
``os.fsdecode`` style, and pass through unchanged). No file, fd, process or module state is
touched. ``split_command`` -> ``_Scanner.scan`` (tokens with raw offsets; heredoc bodies skipped)
-> ``_classify`` (a ``Split``). ``join_words`` quotes the other way (``split_command`` of its
result gives back the same words); ``strip_future_suffixes`` splices the text by the offsets the
scanner recorded. Imports: nothing but ``__future__``, so the module costs next to nothing on the
cache-hit path (docs/cli.md).

The grammar:

- Words: blanks (space, tab, newline) separate them; single quotes keep everything; double quotes
  keep everything but ``$``, backquote and a backslash before ``$ ` " \\`` or newline; a
  backslash outside quotes escapes the next character; backslash-newline joins lines; ``#`` at
  the start of a word starts a comment that runs to the end of the line.
- Opaque words: a ``$(...)``, ``$((...))``, backquote, ``<(...)`` or ``>(...)`` substitution is
  part of the word it appears in (nested parentheses and quotes handled; its inside yields no
  words); ``$NAME``, ``$1``, ``$@``, ``${...}``, ``$'...'`` and ``$"..."`` make a word opaque
  too, and so do an unquoted leading ``~`` and a brace expansion (``{a,b}``, ``{1..3}``). A ``$``
  that bash keeps literally (``\\$``, ``'$'``, ``a$``) does not.
- Operators: ``| || & && ; ;; ;& ;;& ( ) |&`` and the redirections ``< > >> >| &> &>> <> << <<-
  <<< <& >&``, each optionally preceded, with no space, by an fd number ``N`` (or ``{name}``).
  ``>& WORD`` writes WORD unless WORD is a number or ``-`` (then it duplicates an fd, as ``<&``
  always does).
- Heredocs: after ``<<`` / ``<<-`` the delimiter word; the body (the lines after the current line
  up to the delimiter line, leading tabs ignored for ``<<-``, else to the end of the text) yields
  nothing. A here-string word (``<<< WORD``) yields nothing either.
- Bash keywords that change the meaning of ``<`` and ``>``: an arithmetic command ``(( ... ))``
  is one opaque word, and inside ``[[ ... ]]`` ``<`` and ``>`` compare strings (no redirection).

Not modelled (rare in commands worth caching): aliases, brace expansion, a ``case`` statement
inside ``$(...)`` (its unbalanced ``)`` ends the substitution early), heredocs inside a
substitution.
"""

from __future__ import annotations

__all__ = [
    "Word", "Split", "CommandSyntaxError", "split_command", "join_words", "strip_future_suffixes",
]

_LETTERS = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ"
_DIGITS = "0123456789"
_BLANKS = frozenset(" \t")
_WORD_BREAK = frozenset(" \t\n|&;()<>")
_CONTROL_CHARS = frozenset("|&;()")
_NAME_START = frozenset(_LETTERS + "_")
_NAME_CHARS = frozenset(_LETTERS + _DIGITS + "_")
_SPECIAL_PARAMETERS = frozenset("@*#?-$!" + _DIGITS)
_DOUBLE_QUOTE_ESCAPES = frozenset('$`"\\\n')
_GLOB_CHARS = frozenset("*?[")
_SAFE_CHARS = frozenset(_LETTERS + _DIGITS + "@%+=:,./-_")  # what needs no quoting
# Longest first: the scanner takes the first that matches.
_OPERATORS = ("<<<", "<<-", "&>>", ";;&", "||", "|&", "&&", "&>", ";;", ";&", "<<", "<>", "<&",
              ">>", ">|", ">&", "|", "&", ";", "(", ")", "<", ">")
_HEREDOCS = frozenset(("<<", "<<-"))
_REDIRECTIONS = frozenset(("<", ">", ">>", ">|", "&>", "&>>", "<>", "<<", "<<-", "<<<", "<&",
                           ">&"))
_NO_FILE = frozenset(("<<", "<<-", "<<<", "<&"))  # their target names no file
_APPENDS = frozenset((">>", "&>>"))
# After these words a new command starts, so `[[` there is the test keyword.
_COMMAND_PREFIXES = frozenset(("!", "then", "do", "else", "elif", "if", "while", "until", "{",
                               "time"))
_SUFFIX = ".FUTURE"


class CommandSyntaxError(ValueError):
    """The command text cannot be split (unterminated quote or substitution, redirection with no
    target); bash would refuse it too. ``offset`` is where the faulty construct starts."""

    def __init__(self, message: str, offset: int | None = None):
        super().__init__(message)
        self.offset = offset

    def __reduce__(self):
        return type(self), (str(self), self.offset)


class _Record:
    """Read-only record with value equality: what a frozen dataclass gives, without importing
    ``dataclasses`` (and ``inspect``) on seamless-run's start-up path."""

    __slots__ = ()

    def _values(self) -> tuple:
        return tuple(getattr(self, name) for name in self.__slots__)

    def _assign(self, *values) -> None:
        for name, value in zip(self.__slots__, values):
            object.__setattr__(self, name, value)

    def __setattr__(self, name, value):
        raise AttributeError(f"{type(self).__name__} is read-only (cannot set {name!r})")

    def __delattr__(self, name):
        raise AttributeError(f"{type(self).__name__} is read-only (cannot delete {name!r})")

    def __eq__(self, other):
        if type(other) is not type(self):
            return NotImplemented
        return self._values() == other._values()

    def __hash__(self):
        return hash(self._values())

    def __reduce__(self):
        return type(self), self._values()

    def __repr__(self):
        fields = ", ".join(f"{name}={value!r}" for name, value in
                           zip(self.__slots__, self._values()))
        return f"{type(self).__name__}({fields})"


class Word(_Record):
    """One word of the command.

    ``text``: after quote and escape removal (substitutions kept as written); ``start``/``end``:
    its raw span in the command text; ``opaque``: bash expands something in it at run time, so
    it is never an input; ``glob``: an unquoted ``*``, ``?`` or ``[`` makes it a pattern bash
    expands against the directory.
    """

    __slots__ = ("text", "start", "end", "opaque", "glob")

    def __init__(self, text: str, start: int, end: int, opaque: bool = False,
                 glob: bool = False):
        self._assign(text, start, end, opaque, glob)


class Split(_Record):
    """What ``split_command`` found: argument ``words`` (operators and redirection targets left
    out), the targets of read redirections (``inputs``) and of write redirections (``outputs``),
    ``appends`` being the outputs that bash appends to. Opaque targets are left out."""

    __slots__ = ("words", "inputs", "outputs", "appends")

    def __init__(self, words: list, inputs: list, outputs: list, appends: list):
        self._assign(words, inputs, outputs, appends)


def split_command(text: str) -> Split:
    """Split ``text`` as bash would into words and redirections, expanding nothing."""
    if not isinstance(text, str):
        raise TypeError(f"split_command() needs the command as str, got {type(text).__name__} "
                        f"(decode bytes with os.fsdecode)")
    return _classify(_Scanner(text).scan())


def join_words(argv: list[str]) -> str:
    """One command text in which bash sees exactly the words of ``argv``: each word quoted only
    when it must be, so ``["paste", "a", "b"]`` gives the same text as ``"paste a b"``."""
    return " ".join(_quote(word) for word in argv)


def strip_future_suffixes(text: str, words: list[Word]) -> str:
    """``text`` with the trailing ``.FUTURE`` of each word removed, so that each word ``X.FUTURE``
    becomes ``X`` (docs/cli.md). Spliced by raw offsets, right to left, so the rest of the
    text stays byte for byte."""
    for word in sorted(words, key=lambda w: w.start, reverse=True):
        text = text[:word.start] + _without_suffix(text, word) + text[word.end:]
    return text


def _without_suffix(text: str, word: Word) -> str:
    """The raw span of ``word`` rewritten so that it reads as the word minus ``.FUTURE``."""
    if len(word.text) <= len(_SUFFIX) or not word.text.endswith(_SUFFIX):
        raise ValueError(f"strip_future_suffixes() got the word {word.text!r} at offset "
                         f"{word.start}, which is not X.FUTURE (pass only the X.FUTURE words)")
    raw = text[word.start:word.end]
    body = raw.rstrip("'\"")  # closing quotes stay: `"x.FUTURE"` -> `"x"`
    wanted = word.text[:-len(_SUFFIX)]
    if text[word.end:word.end + 1] in ("<", ">") and _is_fd_prefix(wanted):
        return f"'{wanted}'"  # `2.FUTURE>x` must not turn into the fd redirection `2>x`
    if body.endswith(_SUFFIX):
        candidate = body[:-len(_SUFFIX)] + raw[len(body):]
        if _single_word_text(candidate) == wanted:
            return candidate
    if word.opaque:  # requoting would stop bash from expanding it
        raise ValueError(f"cannot remove .FUTURE from the word {raw!r} at offset {word.start} "
                         f"of the command (write the suffix unquoted: X.FUTURE)")
    return _quote(wanted)  # e.g. `x.FUTU'RE'` or `x\.FUTURE`: say the same word plainly


def _single_word_text(raw: str) -> str | None:
    """The text of ``raw`` when it scans as exactly one word, else None."""
    try:
        tokens = _Scanner(raw).scan()
    except CommandSyntaxError:
        return None
    if len(tokens) != 1 or tokens[0][0] != "word":
        return None
    return tokens[0][1].text


def _quote(word: str) -> str:
    """``word`` as bash must read it: unchanged when safe, else in single quotes (a ``'`` inside
    becomes ``'"'"'``). Surrogate escapes are quoted, so their bytes reach bash unchanged."""
    if not isinstance(word, str):
        raise TypeError(f"join_words() needs str words, got {word!r} ({type(word).__name__}; "
                        f"decode file names with os.fsdecode)")
    if word and all(c in _SAFE_CHARS for c in word):
        return word
    return "'" + word.replace("'", "'\"'\"'") + "'"


class _Scanner:
    """One pass over the text that produces tokens ``(kind, value, start, end)``.

    Kinds: ``"word"`` and ``"io"`` (an fd number written before a redirection) carry a ``Word``;
    ``"op"`` an operator string; ``"newline"``. A heredoc delimiter is remembered when its word is
    read and its body skipped at the next newline.
    """

    def __init__(self, text: str):
        self.text = text
        self.n = len(text)
        self.tokens: list[tuple] = []
        self._heredocs: list[tuple[str, bool]] = []  # (delimiter, strip tabs), in order
        self._delimiter_op: str | None = None  # `<<`/`<<-` just read: next word is a delimiter

    def scan(self) -> list[tuple]:
        text, n, i = self.text, self.n, 0
        while i < n:
            c = text[i]
            if c in _BLANKS:
                i += 1
            elif c == "\n":
                self._delimiter_op = None
                self.tokens.append(("newline", c, i, i + 1))
                i = self._skip_heredoc_bodies(i + 1)
            elif c == "\\" and text.startswith("\n", i + 1):
                i += 2
            elif c == "#":
                end = text.find("\n", i)
                i = n if end < 0 else end
            elif text.startswith("((", i):
                i = self._arithmetic_command(i)
            elif c in _CONTROL_CHARS or (c in "<>" and not text.startswith("(", i + 1)):
                i = self._operator(i)
            else:
                i = self._word(i)
        return self.tokens

    def _error(self, what: str, offset: int):
        raise CommandSyntaxError(f"unterminated {what} starting at offset {offset} of the command",
                                 offset)

    def _operator(self, i: int) -> int:
        op = next(o for o in _OPERATORS if self.text.startswith(o, i))
        self.tokens.append(("op", op, i, i + len(op)))
        self._delimiter_op = op if op in _HEREDOCS else None
        return i + len(op)

    def _arithmetic_command(self, i: int) -> int:
        """``(( expr ))``: one opaque word; its ``<`` and ``>`` compare numbers."""
        end = self._match_paren(i + 1, i, "(( arithmetic command")
        self.tokens.append(("word", Word(self.text[i:end], i, end, opaque=True), i, end))
        return end

    def _word(self, i: int) -> int:
        text, n, start = self.text, self.n, i
        parts: list[str] = []
        bare: list[str] = []  # its unquoted characters, "\0" for each quoted or escaped piece
        opaque = False
        while i < n:
            c = text[i]
            if c in _WORD_BREAK:
                if c not in "<>" or not text.startswith("(", i + 1):
                    break
                end = self._match_paren(i + 2, i, c + "( process substitution")
                parts.append(text[i:end])
                opaque, i = True, end
            elif c == "\\":
                if i + 1 == n:
                    parts.append(c)  # a final backslash is literal in bash
                elif text[i + 1] != "\n":
                    parts.append(text[i + 1])
                    bare.append("\0")
                i += 2
            elif c == "'":
                end = self._closing_single_quote(i)
                parts.append(text[i + 1:end])
                bare.append("\0")
                i = end + 1
            elif c == '"':
                i, expands = self._double_quoted(i, parts)
                bare.append("\0")
                opaque = opaque or expands
            elif c in "$`":
                end, expands = self._expansion(i, in_double_quotes=False)
                parts.append(text[i:end])
                opaque, i = opaque or expands, end
            else:
                parts.append(c)
                bare.append(c)
                i += 1
        i = min(i, n)
        unquoted = "".join(bare)
        self._emit_word(Word("".join(parts), start, i, opaque or _expands(unquoted),
                             any(c in _GLOB_CHARS for c in unquoted)))
        return i

    def _emit_word(self, word: Word) -> None:
        kind = "word"
        if self._delimiter_op is not None:
            self._heredocs.append((word.text, self._delimiter_op == "<<-"))
            self._delimiter_op = None
        elif word.end < self.n and self.text[word.end] in "<>" and _is_fd_prefix(
                self.text[word.start:word.end]):
            kind = "io"
        self.tokens.append((kind, word, word.start, word.end))

    def _closing_single_quote(self, i: int) -> int:
        end = self.text.find("'", i + 1)
        if end < 0:
            self._error("single quote", i)
        return end

    def _double_quoted(self, i: int, parts: list[str]) -> tuple[int, bool]:
        """Scan ``"..."`` from ``i``; its text goes to ``parts``. Returns the end and whether
        something in it expands."""
        text, n, j = self.text, self.n, i + 1
        expands = False
        while j < n:
            c = text[j]
            if c == '"':
                return j + 1, expands
            if c == "\\" and j + 1 < n and text[j + 1] in _DOUBLE_QUOTE_ESCAPES:
                if text[j + 1] != "\n":
                    parts.append(text[j + 1])
                j += 2
            elif c in "$`":
                end, inner_expands = self._expansion(j, in_double_quotes=True)
                parts.append(text[j:end])
                expands, j = expands or inner_expands, end
            else:
                parts.append(c)
                j += 1
        self._error("double quote", i)

    def _expansion(self, i: int, in_double_quotes: bool) -> tuple[int, bool]:
        """The end of the ``$...`` or backquote construct at ``i``, and whether it expands."""
        if self.text[i] == "`":
            return self._backquote(i), True
        return self._dollar(i, in_double_quotes)

    def _dollar(self, i: int, in_double_quotes: bool) -> tuple[int, bool]:
        """The end of the expansion that starts with the ``$`` at ``i``, and whether there is one
        (a ``$`` before a blank, ``/``, the end... is a literal character)."""
        text = self.text
        following = text[i + 1:i + 2]
        if following == "(":
            what = ("$(( arithmetic expansion" if text.startswith("((", i + 1)
                    else "$( substitution")
            return self._match_paren(i + 2, i, what), True
        if following == "{":
            return self._match_brace(i + 2, i), True
        if following == "'" and not in_double_quotes:
            return self._ansi_c_quote(i), True
        if following == '"' and not in_double_quotes:
            return self._double_quoted(i + 1, [])[0], True
        if following in _NAME_START:
            j = i + 2
            while j < self.n and text[j] in _NAME_CHARS:
                j += 1
            return j, True
        if following in _SPECIAL_PARAMETERS:
            return i + 2, True
        return i + 1, False

    def _skip_nested(self, j: int, any_dollar: bool) -> int:
        """Just past the escape, quote or substitution that starts at ``j``; ``j`` if none does.
        ``any_dollar=False`` takes only ``${`` and ``$'`` (inside ``(...)`` a ``$(`` nests)."""
        text = self.text
        c = text[j]
        if c == "\\":
            return j + 2
        if c == "'":
            return self._closing_single_quote(j) + 1
        if c == '"':
            return self._double_quoted(j, [])[0]
        if c == "`":
            return self._backquote(j)
        if c == "$" and (any_dollar or text.startswith(("{", "'"), j + 1)):
            return self._dollar(j, in_double_quotes=False)[0]
        return j

    def _match_paren(self, j: int, start: int, what: str) -> int:
        """The end of a construct opened by ``(`` just before ``j``: nested parentheses, quotes,
        substitutions and comments inside are skipped."""
        text, n, depth = self.text, self.n, 1
        while j < n:
            c = text[j]
            skipped = self._skip_nested(j, any_dollar=False)
            if skipped != j:
                j = skipped
            elif c == "#" and text[j - 1] in " \t\n;|&(":
                end = text.find("\n", j)
                j = n if end < 0 else end
            else:
                depth += (c == "(") - (c == ")")
                j += 1
                if depth == 0:
                    return j
        self._error(what, start)

    def _match_brace(self, j: int, start: int) -> int:
        """The end of ``${...}`` opened just before ``j``. Quotes inside count even within double
        quotes, as in bash 5: ``"${x:-it's}"`` is unterminated."""
        text, n = self.text, self.n
        while j < n:
            c = text[j]
            if c == "}":
                return j + 1
            skipped = self._skip_nested(j, any_dollar=True)
            j = skipped if skipped != j else j + 1
        self._error("${ expansion", start)

    def _ansi_c_quote(self, i: int) -> int:
        """The end of ``$'...'``."""
        return self._escaped_until(i, i + 2, "'", "$' quote")

    def _backquote(self, i: int) -> int:
        """The end of a backquote substitution."""
        return self._escaped_until(i, i + 1, "`", "backquote substitution")

    def _escaped_until(self, i: int, j: int, closer: str, what: str) -> int:
        """The end of the construct opened at ``i``: just past the first ``closer`` from ``j``
        on, a backslash escaping the next character."""
        text, n = self.text, self.n
        while j < n:
            if text[j] == "\\":
                j += 2
            elif text[j] == closer:
                return j + 1
            else:
                j += 1
        self._error(what, i)

    def _skip_heredoc_bodies(self, i: int) -> int:
        """Skip the bodies of the heredocs opened on the line that ended just before ``i``."""
        text, n = self.text, self.n
        for delimiter, strip_tabs in self._heredocs:
            while i < n:
                end = text.find("\n", i)
                line = text[i:] if end < 0 else text[i:end]
                i = n if end < 0 else end + 1
                if (line.lstrip("\t") if strip_tabs else line) == delimiter:
                    break
        self._heredocs.clear()
        return i


def _expands(unquoted: str) -> bool:
    """Bash expands a leading ``~`` (to a home directory; in ``NAME=value`` also one after the
    ``=`` or a ``:``) and a brace expansion (``{a,b}``, ``{1..3}``) written in the unquoted
    characters of a word."""
    if unquoted.startswith("~"):
        return True
    name, equals, value = unquoted.partition("=")
    if equals and _is_name(name) and (value.startswith("~") or ":~" in value):
        return True
    opening, closing = unquoted.find("{"), unquoted.rfind("}")
    inside = unquoted[opening + 1:closing] if 0 <= opening < closing else ""
    return "," in inside or ".." in inside  # may flag a few literal words too: they stay untracked


def _is_fd_prefix(raw: str) -> bool:
    """``2`` in ``2>err`` or ``{fd}`` in ``{fd}>log``: written directly before a redirection."""
    if raw.isdigit() and raw.isascii():
        return True
    return raw[:1] == "{" and raw[-1:] == "}" and _is_name(raw[1:-1])


def _is_name(text: str) -> bool:
    """``text`` is a shell variable name."""
    return text[:1] in _NAME_START and all(c in _NAME_CHARS for c in text)


def _is_fd_target(text: str) -> bool:
    """``1`` in ``>&1``, ``-`` in ``>&-``, ``3-`` in ``>&3-``: an fd, not a file name."""
    number = text.removesuffix("-")
    return text == "-" or (number.isdigit() and number.isascii())


def _bare(word: Word, keyword: str) -> bool:
    """``word`` is ``keyword`` written without quotes or escapes."""
    return not word.opaque and word.text == keyword and word.end - word.start == len(keyword)


def _classify(tokens: list[tuple]) -> Split:
    """Sort the tokens into argument words, inputs and outputs."""
    split = Split([], [], [], [])
    command_start = True  # where a command name may stand, so `[[` is the test keyword
    in_test = False  # inside `[[ ... ]]`, where < and > compare strings
    k = 0
    while k < len(tokens):
        kind, value, start, _ = tokens[k]
        fd = None
        if kind == "io":  # the scanner made sure a redirection operator follows
            fd = value
            k += 1
            kind, value, start, _ = tokens[k]
        if kind == "op" and value in _REDIRECTIONS:
            if not (in_test and value in ("<", ">")):
                target = tokens[k + 1] if k + 1 < len(tokens) else None
                if target is None or target[0] not in ("word", "io"):
                    raise CommandSyntaxError(
                        f"redirection {value!r} at offset {start} of the command has no target "
                        f"(a word must follow it)", start)
                _route(value, fd, target[1], split)
                k += 1
        elif kind == "word":
            split.words.append(value)
            if command_start and _bare(value, "[["):
                in_test = True
            elif in_test and _bare(value, "]]"):
                in_test = False
            command_start = value.text in _COMMAND_PREFIXES and _bare(value, value.text)
        else:
            command_start = True
        k += 1
    return split


def _route(op: str, fd: Word | None, target: Word, split: Split) -> None:
    """File the target of one redirection: read, written, appended to, or no file at all."""
    if op in _NO_FILE or target.opaque:
        return
    if op == ">&" and (fd is not None or _is_fd_target(target.text)):
        return  # `N>&M`, `>&M`, `>&-`; `N>&word` is an error in bash ("ambiguous redirect")
    if op in ("<", "<>"):
        split.inputs.append(target)
    if op != "<":
        split.outputs.append(target)
    if op in _APPENDS:
        split.appends.append(target)
