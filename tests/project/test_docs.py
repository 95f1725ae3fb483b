"""References between the repository's files and its Markdown documents.

Every Markdown file that a file of the repository (package, tests, notebooks, docs, README, scripts,
benchmarks, data) names must exist, and every ``docs/method.md section N`` must name a section that
docs/method.md has, so that a renamed document or a renumbered section cannot leave a docstring, a
notebook or a page pointing nowhere.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
METHOD = ROOT / "docs" / "method.md"
SELF = Path(__file__).resolve()  # left out of the scan: its examples of broken references are on purpose
#: what is read: the top-level files and folders of the project (folders recursively)
SCANNED = ("README.md", "pyproject.toml", "environment.yml", "gradeclip_utils", "tests", "notebooks", "docs",
           "scripts", "benchmarks", "data")
TEXT_SUFFIXES = frozenset({".py", ".md", ".ipynb", ".sh", ".txt", ".toml", ".yml", ".yaml", ".json", ".cfg"})
SKIPPED_FOLDERS = frozenset({"__pycache__", ".ipynb_checkpoints"})
#: Markdown files the code writes into its output folders (named, never committed)
GENERATED = frozenset({"summary.md"})

#: a path ending in .md, not part of a longer word or path (a URL's pieces are preceded by "/" or a letter)
MARKDOWN_PATH = re.compile(r"(?<![\w/.-])((?:[\w.-]+/)*[\w-][\w.-]*\.md)(?![\w.-]*\w)")
#: a host name as the first piece of a path: an address on the web, not a file here
HOST = re.compile(r"^[\w-]+(\.[\w-]+)*\.[a-z]{2,}$")
NUMBER = r"\d+(?:\.\d+)*"
NUMBERS = rf"{NUMBER}(?:\s*(?:-|–|,|and|to)\s*{NUMBER})*"
SECTION_AFTER = re.compile(rf"docs/method\.md,?\s+sections?\s+({NUMBERS})")
SECTION_BEFORE = re.compile(rf"sections?\s+({NUMBERS})\s+of\s+docs/method\.md")
HEADING = re.compile(rf"^(#{{2,4}})\s+({NUMBER})\.?\s+\S", re.MULTILINE)


def scanned_files() -> list[Path]:
    files = []
    for name in SCANNED:
        path = ROOT / name
        candidates = [path] if path.is_file() else sorted(path.rglob("*")) if path.is_dir() else []
        for candidate in candidates:
            parts = candidate.relative_to(ROOT).parts
            if (candidate.is_file() and candidate.suffix in TEXT_SUFFIXES and candidate != SELF
                    and not any(part in SKIPPED_FOLDERS or part.startswith(".") for part in parts)):
                files.append(candidate)
    return files


def text_of(path: Path) -> str:
    """A file's text; a notebook's cell sources, one cell after another (so that a reference broken over
    two lines of a cell reads as it shows, not as the JSON stores it)."""
    text = path.read_text(encoding="utf-8")
    if path.suffix != ".ipynb":
        return text
    cells = json.loads(text)["cells"]
    return "\n\n".join("".join(cell["source"]) if isinstance(cell["source"], list) else cell["source"]
                       for cell in cells)


FILES = scanned_files()
MARKDOWN_NAMES = {path.name for path in FILES if path.suffix == ".md"}


def method_sections() -> dict[str, str]:
    """docs/method.md's numbered sections: number -> heading level (``##`` for 1, ``###`` for 1.2, ...)."""
    return {number: level for level, number in HEADING.findall(METHOD.read_text(encoding="utf-8"))}


def section_numbers(expression: str) -> list[str]:
    """The section numbers of "2", "2.4", "7.3-7.5", "2 and 5", "1, 2 and 4"."""
    return re.findall(NUMBER, expression)


def missing_markdown(path: Path, text: str) -> list[str]:
    """The Markdown paths ``text`` (the file ``path``) names that do not exist."""
    problems = []
    for match in MARKDOWN_PATH.finditer(text):
        target = match.group(1)
        pieces = target.split("/")
        if len(pieces) > 1 and HOST.match(pieces[0]):
            continue  # github.com/.../README.md: another repository's file
        line = text.count("\n", 0, match.start()) + 1
        where = f"{path.relative_to(ROOT)}:{line}: {target}"
        if pieces[-1] in GENERATED:
            continue
        if pieces[-1] == "method.md" and not text[:match.end()].endswith("docs/method.md"):
            problems.append(f"{where} (name the method notes by their path, docs/method.md, so that the "
                            "sections a reference names can be checked)")
            continue
        if (ROOT / target).is_file() or (path.parent / target).is_file():
            continue
        if len(pieces) == 1 and target in MARKDOWN_NAMES:
            continue  # a bare name of one of the repository's Markdown files (e.g. a path built in code)
        problems.append(f"{where} (no such file)")
    return problems


def missing_sections(path: Path, text: str, sections: dict[str, str]) -> list[str]:
    problems = []
    for pattern in (SECTION_AFTER, SECTION_BEFORE):
        for match in pattern.finditer(text):
            line = text.count("\n", 0, match.start()) + 1
            for number in section_numbers(match.group(1)):
                if number not in sections:
                    problems.append(f"{path.relative_to(ROOT)}:{line}: docs/method.md has no section {number} "
                                    f"({' '.join(match.group(0).split())!r})")
    return problems


def test_the_scan_reads_the_project():
    names = {path.relative_to(ROOT).as_posix() for path in FILES}
    for expected in ("README.md", "docs/method.md", "gradeclip_utils/explain.py",
                     "notebooks/01_quick_start.ipynb", "scripts/main.sh", "benchmarks/speed.py",
                     "tests/methods/test_grad_eclip.py", "docs/results/config.json"):
        assert expected in names


def test_markdown_references_exist():
    problems = [problem for path in FILES for problem in missing_markdown(path, text_of(path))]
    assert not problems, "references to Markdown files that do not exist:\n" + "\n".join(problems)


def test_method_section_references_exist():
    sections = method_sections()
    problems = [problem for path in FILES for problem in missing_sections(path, text_of(path), sections)]
    assert not problems, "references to sections docs/method.md does not have:\n" + "\n".join(problems)


def test_method_notes_are_numbered_in_order():
    """Sections 1, 2, ... in order, each with subsections N.1, N.2, ... in order (a reference by number
    stays meaningful only while the numbering has no gaps or repeats)."""
    headings = HEADING.findall(METHOD.read_text(encoding="utf-8"))
    assert headings, "docs/method.md has no numbered sections"
    top, sub = 0, 0
    for level, number in headings:
        parts = [int(p) for p in number.split(".")]
        assert len(parts) == len(level) - 1, f"section {number} under a {level} heading"
        if len(parts) == 1:
            top, sub = top + 1, 0
            assert parts == [top], f"section {number} where {top} was expected"
        elif len(parts) == 2:
            sub += 1
            assert parts == [top, sub], f"section {number} where {top}.{sub} was expected"


@pytest.mark.parametrize("text, problems", [
    ("see docs/method.md section 2.4 and docs/method.md sections 7.3-7.5", 0),
    ("see docs/method.md section 99", 1),
    ("see docs/method.md sections 2 and 42", 1),
    ("see section 3.99 of docs/method.md", 1),
    ("see docs/method.md\n    section 12.1 (a docstring's line break)", 1),
])
def test_section_check_catches_missing_sections(text, problems):
    assert len(missing_sections(ROOT / "x.py", text, method_sections())) == problems


@pytest.mark.parametrize("text, problems", [
    ("docs/method.md, docs/baselines.md, data/synthetic_clip/MODEL_CARD.md, OUT/summary.md", 0),
    ("github.com/someone/project/blob/main/README.md and https://example.org/notes.md", 0),
    ('DATA_DIR / "MODEL_CARD.md"', 0),
    ("method.md section 4", 1),
    ("docs/methods.md", 1),
    ("see docs/nowhere.md and [link](missing.md)", 2),
])
def test_markdown_check_catches_missing_files(text, problems):
    assert len(missing_markdown(ROOT / "gradeclip_utils" / "x.py", text)) == problems
