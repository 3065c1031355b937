"""Every markdown document the code cites exists, and so does every section it names.

Docstrings and comments point readers at the documentation: ``docs/caching.md``,
``docs/design/scheduling.md, "Invariants"``, ``cli.md §3.2``. This module scans the code
(``seamless/**/*.py|pyx|pxd``, ``bench/*.py``, ``tests/**/*.py``, itself excluded) for such
references and checks each against the repository: the document must be in ``docs/`` or
``docs/design/`` (a bare name is looked up in ``docs/``, then ``docs/design/``, then at the top
of the repository), a quoted section must be one of its headings (compared without case,
backticks and surrounding blanks; ``"Queue"`` also names a heading ``Queue: ...``), an anchor
(``cli.md#the-cache``) must be a heading's GitHub slug, and a section number is accepted only if
the document numbers its headings.

Read-only: the test opens files and creates nothing.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import NamedTuple

ROOT = Path(__file__).resolve().parents[1]
THIS = Path(__file__).resolve()
DOC_DIRS = ("docs", "docs/design")

# A document name, optionally after docs/ or docs/design/, not part of a longer path or word.
_DOC = r"(?<![\w/.*-])(?P<doc>(?:docs/(?:design/)?)?[A-Za-z0-9_-]+\.md)\b"
# What may follow it: an anchor, a quoted heading, or section numbers. A reference may wrap onto
# the next line of a docstring or of a comment (the "#" of the next comment line is skipped).
_GAP = r"(?:'s)?\s*,?\s*(?:#\s+)?"
_HEADING_GAP = r"\s*,\s*(?:#\s+)?"  # a quoted heading always follows a comma
_NUMBER = r"\d+(?:\.\d+)*"
REFERENCE = re.compile(
    _DOC
    + r"(?:"
    + r"#(?P<anchor>[\w-]+)"
    + r"|" + _HEADING_GAP + r"(?:\"(?P<heading>[^\"\n]{1,80})\"|'(?P<heading1>[^'\n]{1,80})')"
    + r"|" + _GAP + r"(?:§\s*|sections?\s+)(?P<numbers>" + _NUMBER
    + r"(?:\s*(?:,|and)\s*" + _NUMBER + r")*)"
    + r"|\s*,?\s+(?P<bare_number>" + _NUMBER + r")(?=[)\s:;,])"
    + r")?"
)
_PATH_JOIN = re.compile(r"/\s*[\"']$")
_HEADING_LINE = re.compile(r"^(#{1,6})\s+(?P<text>.+?)\s*#*\s*$")
_FENCE = re.compile(r"^\s*(```|~~~)")
_LEADING_NUMBER = re.compile(r"^(?P<number>\d+(?:\.\d+)*)\.?\s+")


class Reference(NamedTuple):
    source: str  # path relative to the repository, with the line number
    doc: str
    heading: str | None = None
    anchor: str | None = None
    numbers: tuple[str, ...] = ()


def normalise(text: str) -> str:
    """A heading or a cited section as compared: no backticks, no case, single blanks."""
    return " ".join(text.replace("`", "").split()).casefold()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, blanks to hyphens."""
    text = heading.replace("`", "").strip().lower()
    text = re.sub(r"[^\w\- ]", "", text)
    return text.replace(" ", "-")


def headings(markdown: str) -> list[str]:
    """The heading texts of a markdown document, skipping fenced code blocks."""
    found, fenced = [], False
    for line in markdown.splitlines():
        if _FENCE.match(line):
            fenced = not fenced
            continue
        m = None if fenced else _HEADING_LINE.match(line)
        if m:
            found.append(m.group("text"))
    return found


def find_references(text: str, source: str) -> list[Reference]:
    """Every document reference in ``text`` (a file's contents), in order."""
    refs = []
    for m in REFERENCE.finditer(text):
        if _PATH_JOIN.search(text, max(0, m.start() - 8), m.start()):
            continue  # ``tmp_path / "out.md"``: a file the code makes, not a document it cites
        line = text.count("\n", 0, m.start()) + 1
        numbers = m.group("numbers") or m.group("bare_number")
        refs.append(Reference(
            source=f"{source}:{line}", doc=m.group("doc"),
            heading=m.group("heading") or m.group("heading1"),
            anchor=m.group("anchor"),
            numbers=tuple(re.findall(_NUMBER, numbers)) if numbers else ()))
    return refs


def resolve(doc: str, root: Path) -> list[Path]:
    """The file a cited name means (a list of one, or empty): a docs/ path as written; a bare
    name in docs/ first (the user guide), else docs/design/, else the top of the repository."""
    if "/" in doc:
        candidates = [root / doc]
    else:
        candidates = [root / d / doc for d in DOC_DIRS] + [root / doc]
    return [p for p in candidates if p.is_file()][:1]


def problem(ref: Reference, root: Path) -> str | None:
    """Why ``ref`` does not resolve, or None when it does."""
    files = resolve(ref.doc, root)
    if not files:
        return f"{ref.source}: {ref.doc} is not in " + " or ".join(f"{d}/" for d in DOC_DIRS)
    texts = [headings(p.read_text(encoding="utf-8")) for p in files]
    if ref.heading is not None:
        wanted = normalise(ref.heading)
        for hs in texts:
            for h in hs:
                text = normalise(_LEADING_NUMBER.sub("", h))
                if wanted in (text, text.split(":", 1)[0]):
                    return None
        return f"{ref.source}: {ref.doc} has no heading {ref.heading!r}"
    if ref.anchor is not None:
        if any(ref.anchor == slug(h) for hs in texts for h in hs):
            return None
        return f"{ref.source}: {ref.doc} has no heading with the anchor #{ref.anchor}"
    for number in ref.numbers:
        numbered = [m.group("number") for hs in texts for h in hs
                    if (m := _LEADING_NUMBER.match(h))]
        if not numbered:
            return (f"{ref.source}: {ref.doc} does not number its sections: cite section "
                    f"{number} by its heading text instead")
        if number not in numbered:
            return f"{ref.source}: {ref.doc} has no section {number}"
    return None


def scanned_files(root: Path) -> list[Path]:
    files = []
    for pattern in ("*.py", "*.pyx", "*.pxd"):
        files += (root / "seamless").rglob(pattern)
    files += (root / "bench").glob("*.py")
    files += (root / "tests").rglob("*.py")
    return sorted(p for p in files if p.resolve() != THIS and "__pycache__" not in p.parts)


def all_references(root: Path) -> list[Reference]:
    refs = []
    for path in scanned_files(root):
        refs += find_references(path.read_text(encoding="utf-8"), str(path.relative_to(root)))
    return refs


# --- the repository ------------------------------------------------------------------------


def test_every_cited_document_and_section_exists():
    refs = all_references(ROOT)
    assert len(refs) > 50, "the scanner found almost no references: is the pattern broken?"
    problems = [p for ref in refs if (p := problem(ref, ROOT))]
    assert not problems, "dangling documentation references:\n" + "\n".join(problems)


def test_the_design_pages_exist():
    design = ROOT / "docs" / "design"
    for name in ("overview", "identity-and-cache", "worker-pool", "scheduling",
                 "parallel-window", "configuration", "errors", "cli-and-queue", "scale-out"):
        assert (design / f"{name}.md").is_file(), name


def test_design_pages_name_files_that_exist():
    """Each design page lists the files that implement it; those paths must be real."""
    path_in_backticks = re.compile(r"`((?:seamless|tests|bench)/[\w/.-]+)`")
    missing = []
    for page in sorted((ROOT / "docs" / "design").glob("*.md")):
        for name in path_in_backticks.findall(page.read_text(encoding="utf-8")):
            if not (ROOT / name.rstrip("/")).exists():
                missing.append(f"{page.name}: {name}")
    assert not missing, "design pages name files that do not exist:\n" + "\n".join(missing)


# --- the scanner and the checker, on text made here ----------------------------------------


def test_the_scanner_finds_each_form():
    text = '''
    """See docs/caching.md, "The persistent cache" and docs/design/overview.md.
    Also cli.md §3.2, worker-pool.md, section 4, (spec.md, 5: allocation),
    docs/cli.md#the-cache, and (docs/caching.md,
    "Layout") across a line break; cli.md, sections 1.7 and 2."""
    # a comment: docs/parallel.md,
    # "The rules"
    x = ["README.md", "cli.md"] ; DOCS.glob("*.md") ; path/to/other/notes.md ; tmp / "o.md"
    '''
    refs = find_references(text, "t.py")
    assert [(r.doc, r.heading, r.anchor, r.numbers) for r in refs] == [
        ("docs/caching.md", "The persistent cache", None, ()),
        ("docs/design/overview.md", None, None, ()),
        ("cli.md", None, None, ("3.2",)),
        ("worker-pool.md", None, None, ("4",)),
        ("spec.md", None, None, ("5",)),
        ("docs/cli.md", None, "the-cache", ()),
        ("docs/caching.md", "Layout", None, ()),
        ("cli.md", None, None, ("1.7", "2")),
        ("docs/parallel.md", "The rules", None, ()),
        ("README.md", None, None, ()),
        ("cli.md", None, None, ()),
    ]
    assert refs[0].source == "t.py:2" and refs[6].source == "t.py:4"


def _repo(tmp_path: Path, pages: dict[str, str]) -> Path:
    for name, body in pages.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(body, encoding="utf-8")
    return tmp_path


def test_the_checker_accepts_what_exists_and_names_what_does_not(tmp_path):
    root = _repo(tmp_path, {
        "docs/cli.md": "# CLI\n\n## Queue: `seamless-queue`\n\n```\n# not a heading\n```\n",
        "docs/design/numbered.md": "# N\n\n## 3.2 Layout\n",
        "docs/twice.md": "# Twice\n", "docs/design/twice.md": "# Design\n",
    })

    def check(doc, **kw):
        return problem(Reference("x.py:1", doc, **kw), root)

    assert check("docs/cli.md") is None
    assert check("cli.md", heading="queue") is None
    assert check("cli.md", heading="Queue: seamless-queue") is None
    assert check("docs/cli.md", anchor="queue-seamless-queue") is None
    assert check("numbered.md", numbers=("3.2",)) is None
    assert check("numbered.md", heading="Layout") is None
    assert check("twice.md", heading="Twice") is None
    assert check("docs/design/twice.md", heading="Design") is None
    assert "no heading 'Design'" in check("twice.md", heading="Design")  # docs/ comes first
    assert "is not in docs/" in check("docs/missing.md")
    assert "is not in docs/" in check("docs/design/cli.md")
    assert "no heading 'not a heading'" in check("cli.md", heading="not a heading")
    assert "no heading with the anchor" in check("cli.md", anchor="nope")
    assert "does not number its sections" in check("cli.md", numbers=("1.2",))
    assert "no section 4" in check("numbered.md", numbers=("4",))
