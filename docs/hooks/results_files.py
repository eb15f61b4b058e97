"""MkDocs hook: the files under ``benchmarks/results/`` belong to the site.

The pages link to a results file the way a repository browser resolves it, as a relative path
out of ``docs/`` (``../benchmarks/results/evidence.md`` from ``docs/results.md``), so the
links work on a code host and in a checkout. This hook adds every file of
``benchmarks/results/`` to the build under ``benchmarks/results/`` (Markdown files become
pages outside the navigation, figures and data are copied as they are) and points those links
at them, so that ``mkdocs build --strict`` checks every such link and the built site serves
what it links to. Nothing is copied into ``docs/``.
"""

from __future__ import annotations

import re
from pathlib import Path

from mkdocs.structure.files import File, InclusionLevel

RESULTS = "benchmarks/results"


def on_files(files, config):
    root = Path(config.config_file_path).parent
    for path in sorted((root / RESULTS).rglob("*")):
        if path.is_file() and not path.name.startswith("."):
            uri = path.relative_to(root).as_posix()
            files.append(
                File.generated(
                    config, uri, abs_src_path=str(path), inclusion=InclusionLevel.NOT_IN_NAV
                )
            )
    return files


def on_page_markdown(markdown, page, config, files):
    """``](../benchmarks/results/...)`` (one ``../`` more than the page's depth in docs/,
    i.e. out of docs/) becomes the link to the file this hook added to the build."""
    depth = page.file.src_uri.count("/")
    if page.file.src_uri.startswith(RESULTS + "/"):
        return markdown
    outside = re.escape("](" + "../" * (depth + 1) + RESULTS + "/")
    return re.sub(outside, "](" + "../" * depth + RESULTS + "/", markdown)
