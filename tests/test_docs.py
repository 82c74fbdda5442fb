"""README is the front door and docs/ the house: README stays short, its set-up commands are what CI runs,
its map of docs/ is complete, and every relative link in README.md and docs/*.md leads somewhere."""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"

INSTALL = "pip install -r requirements.txt"
QUICKSTART = f"{INSTALL} && python main.py --config configs/quickstart.yaml"
TESTS = f"{INSTALL} && python -m pytest -q"
# The topics README promises a page for (docs/README.md is the index).
TOPIC_PAGES = ("README.md", "architecture.md", "method.md", "scoring.md", "engines.md", "flower.md",
               "privacy.md", "reliability.md", "estimates.md", "benchmarks.md", "experiments.md", "deviations.md")
# Pages README already links to that another branch adds. Take a page off this list when it lands, so its
# links are checked like any other (test_pending_pages_are_still_missing says when).
LINK = re.compile(r"\[[^\]]*\]\(([^)\s]+)\)")
INLINE_CODE = re.compile(r"`[^`]*`")


def markdown_files() -> list[Path]:
    return [README, *sorted(DOCS.glob("*.md"))]


def prose_lines(path: Path, keep_code_text: bool = False) -> list[str]:
    """The file's lines outside fenced code blocks, inline code removed (brackets there are not links) or,
    with keep_code_text, only its backticks."""
    lines, fenced = [], False
    for line in path.read_text(encoding="utf-8").splitlines():
        if line.lstrip().startswith("```"):
            fenced = not fenced
        elif not fenced:
            lines.append(line.replace("`", "") if keep_code_text else INLINE_CODE.sub("", line))
    return lines


def relative_links(path: Path) -> list[str]:
    return [target for line in prose_lines(path) for target in LINK.findall(line)
            if not re.match(r"[a-z][a-z0-9+.-]*:", target)]  # http:, https:, mailto: lead elsewhere


def anchors(path: Path) -> set[str]:
    """GitHub's anchors of the file's headings: lower case, punctuation dropped, spaces as hyphens."""
    seen: dict[str, int] = {}
    result = set()
    for line in prose_lines(path, keep_code_text=True):
        match = re.match(r"#{1,6}\s+(.*?)\s*#*\s*$", line)
        if not match:
            continue
        slug = re.sub(r"[^\w\- ]", "", match.group(1).lower()).replace(" ", "-")
        result.add(slug if slug not in seen else f"{slug}-{seen[slug]}")
        seen[slug] = seen.get(slug, 0) + 1
    return result


def broken_links(path: Path) -> list[str]:
    """Each relative link of the file whose file, or whose heading in that file, does not exist."""
    broken = []
    for target in relative_links(path):
        file_part, _, anchor = target.partition("#")
        linked = (path.parent / file_part).resolve() if file_part else path
        if not linked.exists():
            broken.append(f"{target} (no such file)")
        elif anchor and linked.suffix == ".md" and anchor not in anchors(linked):
            broken.append(f"{target} (no heading #{anchor} in {linked.name})")
    return broken


def test_readme_is_at_most_300_lines() -> None:
    lines = README.read_text(encoding="utf-8").splitlines()
    assert len(lines) <= 300, f"README.md has {len(lines)} lines: move detail to docs/"


def test_readme_setup_commands_are_what_ci_runs() -> None:
    readme = README.read_text(encoding="utf-8").splitlines()
    assert f"    {QUICKSTART}" in readme and f"    {TESTS}" in readme
    ci = [line.strip() for line in (ROOT / ".ci" / "run").read_text(encoding="utf-8").splitlines()
          if line.strip() and not line.lstrip().startswith("#")]
    commands = [shlex.split(line) for line in ci]
    install, run_tests = shlex.split(INSTALL), shlex.split("python -m pytest -q")
    assert install in commands and run_tests in commands, ci
    assert commands.index(install) < commands.index(run_tests)


def test_readme_map_lists_every_docs_page_and_each_exists() -> None:
    text = README.read_text(encoding="utf-8")
    section = text[text.index("\n## Documentation"):]
    mapped = {target.partition("#")[0] for target in LINK.findall(section)}
    for page in TOPIC_PAGES:
        assert f"docs/{page}" in mapped, f"README's map of docs/ lacks docs/{page}"
    for target in mapped:
        assert (ROOT / target).is_file(), f"README's map links to missing {target}"
    for page in DOCS.glob("*.md"):
        assert f"docs/{page.name}" in mapped, f"docs/{page.name} is not in README's map of docs/"
    index_links = set(relative_links(DOCS / "README.md"))
    for page in DOCS.glob("*.md"):
        assert page.name == "README.md" or page.name in index_links, f"docs/README.md lacks {page.name}"


@pytest.mark.parametrize("path", markdown_files(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(path: Path) -> None:
    assert broken_links(path) == []


def test_anchors_follow_githubs_rule(tmp_path: Path) -> None:
    # GitHub lower-cases a heading, drops punctuation but '-' and '_' (and inline code's backticks), and
    # writes spaces as hyphens; a repeated heading gets -1, -2, ...
    page = tmp_path / "page.md"
    page.write_text("# The embedded pool of llama.cpp servers\n\n## Estimates: knowing the bill\n\n"
                    "### train_centralized: the `--max_epochs` flag\n\n## Notes\n\n## Notes\n\n"
                    "    # a shell comment in a code block is no heading\n", encoding="utf-8")
    assert anchors(page) == {"the-embedded-pool-of-llamacpp-servers", "estimates-knowing-the-bill",
                             "train_centralized-the---max_epochs-flag", "notes", "notes-1"}


def test_a_broken_link_is_found(tmp_path: Path) -> None:
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A\n\n## Known part\n", encoding="utf-8")
    page = tmp_path / "README.md"
    page.write_text("[ok](docs/a.md) [ok](docs/a.md#known-part) [ok](https://flower.ai) `[x](nowhere.md)`\n"
                    "[gone](docs/b.md) [bad anchor](docs/a.md#unknown-part) [self](#nothing-here)\n",
                    encoding="utf-8")
    assert broken_links(page) == ["docs/b.md (no such file)",
                                  "docs/a.md#unknown-part (no heading #unknown-part in a.md)",
                                  "#nothing-here (no heading #nothing-here in README.md)"]
