"""MkDocs hooks of this site (registered in mkdocs.yml).

- The version in every page's footer is read from pyproject.toml when the site is built, so
  the site cannot show another.
- The PNGs the examples and benchmarks write (`examples/results/*.png`,
  `benchmarks/results/*.png`) are served as `results/examples/*.png` and
  `results/benchmarks/*.png`, so pages show them without copies in docs/.
- A repository path written as code in a page or docstring (`examples/her_bitflip.py`) is
  linked to that file in the repository, when the file exists.
- Formulas (`$...$` and `$$...$$`, marked by `pymdownx.arithmatex` in its generic mode) are
  rendered to MathML by latex2mathml when the site is built: browsers draw MathML
  themselves, so the site loads no script and fetches nothing for them.
"""

import html
import pathlib
import re
import tomllib

import latex2mathml.converter
from mkdocs.config.defaults import MkDocsConfig
from mkdocs.structure.files import File, Files
from mkdocs.structure.pages import Page


ROOT = pathlib.Path(__file__).resolve().parent.parent
RESULTS = {"examples": ROOT / "examples" / "results", "benchmarks": ROOT / "benchmarks" / "results"}

# A code span that is a repository path: under one of these folders, or one of these files.
_PATH = re.compile(
    r"(?:(?:eqx_replay|examples|benchmarks|tests|docs|\.ci)/[\w./-]+"
    r"|CONTRIBUTING\.md|CHANGELOG\.md|README\.md|pyproject\.toml|mkdocs\.yml)"
)
# An inline code span (a code block's `<code>` follows `<pre>` or a `<span>`), and the link
# around it if there is one.
_CODE = re.compile(r"(<a\b[^>]*>)?<code>([^<]*)</code>")
_INLINE_MATH = re.compile(r'<span class="arithmatex">\\\((.*?)\\\)</span>', re.DOTALL)
_BLOCK_MATH = re.compile(r'<div class="arithmatex">\\\[(.*?)\\\]</div>', re.DOTALL)


def version() -> str:
    """The project's version, as pyproject.toml states it."""
    with open(ROOT / "pyproject.toml", "rb") as file:
        return tomllib.load(file)["project"]["version"]


def on_config(config: MkDocsConfig) -> MkDocsConfig:
    config.copyright = f"eqx_replay {version()}, Apache-2.0"
    return config


def on_files(files: Files, config: MkDocsConfig) -> Files:
    for kind, folder in RESULTS.items():
        for png in sorted(folder.glob("*.png")):
            files.append(
                File.generated(config, f"results/{kind}/{png.name}", abs_src_path=str(png))
            )
    return files


def _link(match: re.Match[str], repo_url: str) -> str:
    link, path = match.group(1), match.group(2)
    if link is not None or not _PATH.fullmatch(path) or not (ROOT / path).exists():
        return match.group(0)
    where = "tree" if (ROOT / path).is_dir() else "blob"
    return f'<a href="{repo_url}/{where}/main/{path}"><code>{path}</code></a>'


def _mathml(tex: str, display: str) -> str:
    return latex2mathml.converter.convert(html.unescape(tex.strip()), display=display)


def on_page_content(html_: str, page: Page, config: MkDocsConfig, files: Files) -> str:
    repo_url = str(config.repo_url).rstrip("/")
    html_ = _CODE.sub(lambda match: _link(match, repo_url), html_)
    html_ = _BLOCK_MATH.sub(lambda match: _mathml(match.group(1), "block"), html_)
    return _INLINE_MATH.sub(lambda match: _mathml(match.group(1), "inline"), html_)
