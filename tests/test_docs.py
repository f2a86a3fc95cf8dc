"""The documentation holds together: README.md is a short front page that links every page of
docs/, every relative link resolves (to a file, and to a heading where it names one), and every
module the pages name exists under midalign/, so a move of the code cannot leave them stale."""

from __future__ import annotations

import ast
import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
DOCS = ROOT / "docs"
PAGES = [README, *sorted(DOCS.glob("*.md"))]  # what names modules: not docs/results' records
LINKED = [*PAGES, DOCS / "results" / "README.md"]
README_MAX_LINES = 120
# The pages the front page sends a reader on to, each a file under docs/.
FRONT_PAGE_LINKS = [
    "probe.md",
    "train.md",
    "eval.md",
    "recipes.md",
    "api.md",
    "data.md",
    "outputs.md",
    "layout.md",
    "design.md",
    "benchmarks.md",
    "results/README.md",
]
FENCE = re.compile(r"^(```|~~~).*?^\1[^\n]*$", re.M | re.S)
LINK = re.compile(r"!?\[[^\]]*\]\(([^)\s]+)\)")
MODULE_PATH = re.compile(r"(?<![\w/.-])midalign/((?:\w+/)*\w+\.py)\b")
DOTTED = re.compile(r"(?<![\w.])midalign(?:\.\w+)+")


def _prose(text: str) -> str:
    """The text outside fenced code blocks and inline code spans."""
    return re.sub(r"`[^`\n]*`", "", FENCE.sub("", text))


def github_slug(heading: str) -> str:
    """The anchor GitHub gives a heading: lowercased, everything but letters, digits, `_`, `-`
    and spaces dropped (inline code keeps its text), spaces turned into hyphens."""
    text = re.sub(r"\[([^\]]*)\]\([^)]*\)", r"\1", heading)  # a link in a heading: its text
    text = re.sub(r"[^\w\- ]", "", text.strip().lower())
    return text.replace(" ", "-")


def anchors(page: Path) -> set[str]:
    """Every heading's anchor on a page, repeated headings numbered as GitHub numbers them."""
    seen: dict[str, int] = {}
    out = set()
    for line in FENCE.sub("", page.read_text()).splitlines():
        m = re.match(r"#{1,6} +(.*?) *#* *$", line)
        if not m:
            continue
        slug = github_slug(m.group(1))
        n = seen.get(slug, 0)
        seen[slug] = n + 1
        out.add(slug if n == 0 else f"{slug}-{n}")
    return out


def _shown(page: Path) -> str:
    """A page as a message names it: from the repository's root, or by name outside it."""
    return str(page.relative_to(ROOT)) if page.is_relative_to(ROOT) else page.name


def relative_links(page: Path) -> list[str]:
    return [t for t in LINK.findall(_prose(page.read_text())) if not re.match(r"\w+:", t)]


def broken_links(pages: list[Path]) -> list[str]:
    """`page: target` for every relative link whose file, or whose heading, does not exist."""
    problems = []
    for page in pages:
        for target in relative_links(page):
            path, _, anchor = target.partition("#")
            file = (page.parent / path).resolve() if path else page
            if not file.exists():
                problems.append(f"{_shown(page)}: {target} (no such file)")
            elif anchor and file.suffix == ".md" and anchor not in anchors(file):
                problems.append(f"{_shown(page)}: {target} (no such heading)")
    return problems


def layout_paths(page: Path) -> list[str]:
    """The files under midalign/ that docs/layout.md names, relative to midalign/.

    In its tree block an entry is indented by two spaces a level below `midalign/` and ends in
    `/` or `.py`; deeper-indented lines go on describing the entry above, and the `.py` names in
    a package's description are files of that package. In its table a backticked `a/b.py` is
    relative to midalign/."""
    text = page.read_text()
    (tree,) = [b for b in re.findall(r"```\n(.*?)```", text, re.S) if b.startswith("midalign/")]
    paths, stack, package = [], [], None
    for line in tree.splitlines()[1:]:
        if not line.startswith("  "):
            break  # back at the repository's top level (recipes/, tests/, …)
        indent = len(line) - len(line.lstrip())
        name, _, description = line.strip().partition(" ")
        if indent % 2 == 0 and indent <= 2 * (len(stack) + 1) and name.endswith(("/", ".py")):
            stack = stack[: indent // 2 - 1] + [name]
            paths.append("".join(stack))
            package = "".join(stack) if name.endswith("/") else None
        else:
            description = line
        if package:
            paths += [package + f for f in re.findall(r"\b\w+\.py\b", description)]
    table = text.split("```", 1)[0]
    paths += re.findall(r"`((?:\w+/)+\w+\.py|__init__\.py)`", table)
    return paths


def _defines(module: Path, name: str) -> bool:
    """Whether `name` is bound at a module's top level (def, class, assignment, import), or
    is one of the names the package exports lazily (`__all__`)."""
    tree = ast.parse(module.read_text())
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            found = node.name == name
        elif isinstance(node, ast.Assign | ast.AnnAssign):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            found = any(isinstance(t, ast.Name) and t.id == name for t in targets)
            if any(isinstance(t, ast.Name) and t.id == "__all__" for t in targets):
                found = found or name in ast.literal_eval(node.value)
        elif isinstance(node, ast.Import | ast.ImportFrom):
            found = any((a.asname or a.name.split(".")[0]) == name for a in node.names)
        else:
            found = False
        if found:
            return True
    return False


def missing_modules(pages: list[Path]) -> list[str]:
    """`page: path` for every midalign/… file, dotted midalign.… name and docs/layout.md entry
    that names no file (or, for a dotted name, no module member) of the package."""
    problems = []
    for page in pages:
        text = page.read_text()
        named = MODULE_PATH.findall(text)
        if page.name == "layout.md":
            named += layout_paths(page)
        problems += [
            f"{_shown(page)}: midalign/{p}" for p in named if not (ROOT / "midalign" / p).exists()
        ]
        for dotted in DOTTED.findall(text):
            parts = dotted.split(".")
            n = len(parts)  # the longest prefix that is a module or a package
            while n > 1 and not (
                ROOT.joinpath(*parts[:n]).with_suffix(".py").exists()
                or ROOT.joinpath(*parts[:n], "__init__.py").exists()
            ):
                n -= 1
            base = ROOT.joinpath(*parts[:n])
            module = base / "__init__.py" if base.is_dir() else base.with_suffix(".py")
            if n < len(parts) and not _defines(module, parts[n]):
                problems.append(f"{_shown(page)}: {dotted}")
    return problems


def test_every_relative_link_resolves_to_a_file_and_heading():
    assert broken_links(LINKED) == []


def test_a_broken_link_or_anchor_is_found(tmp_path):
    (tmp_path / "a.md").write_text("# A `b` (c)\n\n```\n# not a heading\n```\n")
    page = tmp_path / "p.md"
    page.write_text(
        "[ok](a.md#a-b-c) [gone](b.md) [bad](a.md#not-a-heading) `[code](nowhere.md)`\n"
    )
    assert broken_links([page]) == [
        "p.md: b.md (no such file)",
        "p.md: a.md#not-a-heading (no such heading)",
    ]


def test_github_slugs():
    assert github_slug("Models bigger than one device (`--device-map`)") == (
        "models-bigger-than-one-device---device-map"
    )
    assert github_slug("With TRL's SFTTrainer") == "with-trls-sfttrainer"
    assert github_slug("1. The probe: retrieval (paper §2, §4.2, App. D.4)") == (
        "1-the-probe-retrieval-paper-2-42-app-d4"
    )


def test_readme_links_every_docs_page():
    targets = {t.partition("#")[0] for t in relative_links(README)}
    assert [p for p in FRONT_PAGE_LINKS if f"docs/{p}" not in targets] == []
    assert all((DOCS / p).exists() for p in FRONT_PAGE_LINKS)


def test_readme_is_a_short_front_page():
    assert len(README.read_text().splitlines()) <= README_MAX_LINES


def test_every_module_the_pages_name_exists():
    assert missing_modules(PAGES) == []


def test_a_stale_module_name_is_found(tmp_path):
    page = tmp_path / "layout.md"
    page.write_text(
        "| x | `training/run.py`, `training/gone.py` |\n\n```\nmidalign/\n"
        "  probe/         the probe\n    run.py       one run\n    old.py       stale\n"
        "  data/          sources.py, nothere.py\n                 pairs.py\n"
        "recipes/         not under midalign/\n```\n"
        "midalign/models.py, midalign/modeling/loading.py, midalign.models.load_model,\n"
        "midalign.modeling.loading.load_model, midalign.AlignConfig, midalign.nothing\n"
    )
    assert missing_modules([page]) == [
        "layout.md: midalign/models.py",
        "layout.md: midalign/probe/old.py",
        "layout.md: midalign/data/nothere.py",
        "layout.md: midalign/training/gone.py",
        "layout.md: midalign.models.load_model",
        "layout.md: midalign.nothing",
    ]
