"""The README is a guide a reader follows to the letter: every path, `make` target, `metarec` command
and `python -m` module it names exists, it stays within 200 lines, and every link between the README
and the docs pages resolves, anchors included. Reads files only: no metarec import, no command run."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
PAGES = [README, *sorted((ROOT / "docs").glob("*.md"))]
MAX_LINES = 200

FENCE = re.compile(r"^```.*?^```[^\n]*$", re.M | re.S)
INLINE = re.compile(r"`([^`\n]+)`")
LINK = re.compile(r"\[[^\]\n]*\]\(([^)\s]+)\)")
ROOTED = re.compile(r"(?<![\w./~$-])((?:docs|conf|metarec|tests|\.ci)/[\w.*/-]*)")  # a path anywhere in the text
MAKE = re.compile(r"(?:^|[\s;&|(])make((?:[ \t]+[a-z][\w-]*)+)")
METAREC = re.compile(r"(?:^[ \t]*(?:\$[ \t]+)?|[;&|(][ \t]*)metarec[ \t]+([a-z][\w-]*)", re.M)  # at a command's start
MODULE = re.compile(r"python -m (metarec(?:\.\w+)+)")
HEADING = re.compile(r"^#{1,6}[ \t]+(.+?)[ \t]*#*$", re.M)
# words a reader replaces: conf/experiment/NAME.yaml is any preset, outputs/DATE/TIME/ any run
PLACEHOLDERS = {"NAME", "DATE", "TIME", "RUN", "RUN2", "SWEEP", "METHOD", "STATE", "METRIC", "N", "K"}
NOT_IN_CHECKOUT = ("/", "~", "../", "$", "outputs/", ".venv/")  # absolute, home, outside, or made by a run


def code(text: str) -> list[str]:
    """The fenced blocks and inline code spans of a markdown text, each on its own."""
    blocks = FENCE.findall(text)
    return blocks + INLINE.findall(FENCE.sub("", text))


def named_paths(text: str) -> set[str]:
    """Relative paths the text names: links, path-like code spans, and docs/ conf/ metarec/ tests/ paths anywhere."""
    spans = [s for s in INLINE.findall(FENCE.sub("", text))
             if not re.search(r"\s|=|://", s) and ("/" in s or re.search(r"\.(md|py|ya?ml|toml|json)$", s))]
    links = [t.split("#")[0] for t in LINK.findall(text) if not re.match(r"[a-z]+:|#", t)]
    found = {p.rstrip(".,:;") for p in [*spans, *links, *ROOTED.findall(text)] if p}
    return {p for p in found if not p.startswith(NOT_IN_CHECKOUT) and p.split("/")[0] not in PLACEHOLDERS}


def exists(root: Path, path: str) -> bool:
    """Whether `path` is in the checkout; a placeholder word stands for any name (at least one must match)."""
    pattern = "/".join(re.sub(r"\b[A-Z][A-Z0-9]*\b", lambda m: "*" if m[0] in PLACEHOLDERS else m[0], part)
                       for part in path.rstrip("/").split("/"))
    return any(root.glob(pattern)) if "*" in pattern else (root / pattern).exists()


def slug(heading: str) -> str:
    """GitHub's anchor for a heading: lower case, punctuation dropped, spaces as hyphens."""
    return re.sub(r"[^\w\- ]", "", heading.strip().lower()).replace(" ", "-")


def anchors(page: Path) -> set[str]:
    seen: dict[str, int] = {}
    out = set()
    for heading in HEADING.findall(FENCE.sub("", page.read_text())):
        base = slug(heading)
        out.add(base if base not in seen else f"{base}-{seen[base]}")
        seen[base] = seen.get(base, 0) + 1
    return out


def broken_links(page: Path) -> list[str]:
    """Each relative link of `page` whose file, or whose #anchor in that file, does not exist."""
    out = []
    for target in LINK.findall(FENCE.sub("", page.read_text())):
        if re.match(r"[a-z]+:", target):  # https:, mailto:
            continue
        path, _, anchor = target.partition("#")
        dest = (page.parent / path).resolve() if path else page
        if not dest.exists():
            out.append(f"{target}: no file {dest.relative_to(ROOT) if dest.is_relative_to(ROOT) else dest}")
        elif anchor and dest.suffix == ".md" and anchor not in anchors(dest):
            out.append(f"{target}: no heading with anchor #{anchor} in {dest.name}")
    return out


def cli_commands() -> set[str]:
    """The subcommands metarec/cli.py dispatches on: every string it compares `cmd` with."""
    tree = ast.parse((ROOT / "metarec" / "cli.py").read_text())
    return {c.value for node in ast.walk(tree) if isinstance(node, ast.Compare)
            and isinstance(node.left, ast.Name) and node.left.id == "cmd"
            for c in node.comparators if isinstance(c, ast.Constant) and isinstance(c.value, str)}


def makefile_targets() -> set[str]:
    return set(re.findall(r"^([A-Za-z][\w-]*)[ \t]*:(?!=)", (ROOT / "Makefile").read_text(), re.M))


def test_the_readme_is_a_guide_of_at_most_200_lines():
    lines = len(README.read_text().splitlines())
    assert lines <= MAX_LINES, f"README.md has {lines} lines: move the detail into a docs/ page"


def test_every_path_the_readme_names_exists():
    paths = named_paths(README.read_text())
    assert "docs/usage.md" in paths  # the extractor sees the guide's own links
    missing = sorted(p for p in paths if not exists(ROOT, p))
    assert not missing, f"README.md names paths that are not in the checkout: {missing}"


def test_every_make_target_the_readme_names_is_in_the_makefile():
    named = {t for span in code(README.read_text()) for m in MAKE.findall(span) for t in m.split()}
    assert {"setup", "train", "test"} <= named  # the set-up and the test command CI runs (.ci/run)
    assert not named - makefile_targets(), f"README.md names make targets the Makefile lacks: {sorted(named - makefile_targets())}"


def test_ci_runs_the_test_command_the_readme_gives():
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert "make setup" in ci and "make test" in ci


def test_every_metarec_command_the_readme_names_is_one_the_cli_knows():
    known = cli_commands()
    assert {"train", "eval", "data"} <= known  # the dispatch was read, not an empty set
    named = {m for span in code(README.read_text()) for m in METAREC.findall(span)}
    assert named, "the README names no metarec command"
    assert not named - known, f"README.md names metarec commands the CLI lacks: {sorted(named - known)}"


def test_every_module_the_readme_runs_exists():
    for module in MODULE.findall(README.read_text()):
        base = ROOT.joinpath(*module.split("."))
        assert base.with_suffix(".py").exists() or (base / "__main__.py").exists(), f"no module {module}"


@pytest.mark.parametrize("page", PAGES, ids=lambda p: p.name)
def test_the_links_of_each_page_resolve(page):
    broken = broken_links(page)
    assert not broken, f"{page.name}: {broken}"


def test_a_broken_path_or_anchor_is_caught(tmp_path):
    (tmp_path / "docs").mkdir()
    (tmp_path / "docs" / "a.md").write_text("# A page\n\n## Its part\n")
    guide = "See [a](docs/a.md#its-part), `docs/b.md`, `conf/NAME.yaml` and [gone](docs/a.md#nowhere).\n"
    assert named_paths(guide) == {"docs/a.md", "docs/b.md", "conf/NAME.yaml"}
    assert exists(tmp_path, "docs/a.md") and not exists(tmp_path, "docs/b.md")
    assert not exists(tmp_path, "conf/NAME.yaml")  # a placeholder still needs one file to stand for
    assert anchors(tmp_path / "docs" / "a.md") == {"a-page", "its-part"}
