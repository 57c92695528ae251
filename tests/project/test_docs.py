"""The repository describes the product: no work-diary wording in its text files, a README a
newcomer reads in two minutes, a results page of today's numbers, and links that resolve."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
TEXT_SUFFIXES = (".py", ".md", ".sh", ".yaml", ".toml", ".cfg", ".json", ".jsonl", ".txt")  # data files carry commands and paths too
README_MAX_LINES = 150
RESULTS_MAX_BYTES = 40_000

# How and where the code was built, instead of what it does. Ray's own sessions (ray_session,
# session_dir, start_new_session) and words such as "release" or "please" are not matched.
DIARY = {
    "numbered work session": re.compile(r"\bsessions? \d", re.I),
    "work session": re.compile(r"\bwork sessions?\b", re.I),
    "lease": re.compile(r"(?<![a-z])leases?(?![a-z])", re.I),
    "build machine path": re.compile(r"/work/"),
    "device tool folder": re.compile(r"\.device/"),
    "issue tracker tool": re.compile(r"\bissues?[ -]tool", re.I),
    "this machine": re.compile(r"\bthis machine\b", re.I),
    "numbered issue": re.compile(r"\bissues? #?\d", re.I),
}
LINK = re.compile(r"!?\[[^\]]*\]\(\s*<?([^)\s>]+)>?(?:\s+\"[^\"]*\")?\s*\)")


def text_files(root: Path) -> list[Path]:
    """Tracked files, and new ones git does not ignore, with a text suffix this test reads."""
    out = subprocess.run(
        ["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
        cwd=root, capture_output=True, check=True,
    ).stdout.decode()
    names = sorted({n for n in out.split("\0") if n.endswith(TEXT_SUFFIXES)})
    return [root / n for n in names if (root / n).is_file()]


def diary_hits(root: Path, files: list[Path]) -> list[str]:
    """``path:line: [kind] text`` for every line that speaks of the build instead of the product."""
    hits = []
    for path in files:
        if path.resolve() == Path(__file__).resolve():
            continue  # the patterns themselves
        for number, line in enumerate(path.read_text(encoding="utf-8", errors="replace").splitlines(), 1):
            for kind, pattern in DIARY.items():
                if pattern.search(line):
                    hits.append(f"{path.relative_to(root)}:{number}: [{kind}] {line.strip()[:120]}")
    return hits


def broken_links(root: Path) -> list[str]:
    """``path: target`` for every relative Markdown link or image of README.md and docs/*.md whose
    file does not exist."""
    broken = []
    for doc in [root / "README.md", *sorted((root / "docs").glob("*.md"))]:
        for target in LINK.findall(doc.read_text(encoding="utf-8")):
            if re.match(r"[a-z][a-z0-9+.-]*:", target, re.I) or target.startswith("#"):
                continue  # a URL, mailto: or an anchor in the same page
            path = target.split("#", 1)[0]
            if not (doc.parent / path).exists():
                broken.append(f"{doc.relative_to(root)}: {target}")
    return broken


@pytest.fixture(scope="module")
def files() -> list[Path]:
    if not (ROOT / ".git").exists():
        pytest.skip("not a git checkout: no list of tracked files")
    return text_files(ROOT)


def test_text_files_speak_of_the_product_not_of_how_it_was_built(files):
    assert files, "no text files found"
    hits = diary_hits(ROOT, files)
    assert not hits, f"{len(hits)} line(s) describe the build, not the product:\n" + "\n".join(hits)


def test_readme_is_short_and_starts_with_the_setup_commands():
    lines = (ROOT / "README.md").read_text(encoding="utf-8").splitlines()
    assert len(lines) <= README_MAX_LINES, f"README.md has {len(lines)} lines (at most {README_MAX_LINES})"
    first_block = lines[lines.index("```bash") + 1 :][:2]
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8").strip().splitlines()[-1]
    assert [line.split("#")[0].strip() for line in first_block] == [
        "bash scripts/setup.sh && .venv/bin/python jobs/demo.py",
        ci,  # the test command is what CI runs
    ]
    assert ci.startswith("bash scripts/setup.sh && .venv/bin/python -m pytest -q") and ci.endswith('-m "slow or multinode"')


def test_results_page_holds_todays_numbers_only():
    size = (ROOT / "docs" / "RESULTS.md").stat().st_size
    assert size <= RESULTS_MAX_BYTES, f"docs/RESULTS.md is {size} bytes (at most {RESULTS_MAX_BYTES})"


def test_relative_links_of_the_docs_resolve():
    broken = broken_links(ROOT)
    assert not broken, "links to missing files:\n" + "\n".join(broken)
