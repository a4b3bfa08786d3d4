"""Griffe extension: Sphinx roles in docstrings become mkdocs-autorefs cross-references.

The docstrings are written with reST roles (``:class:`~resilient.Retry```,
``:meth:`acquire```, ``:func:`deadline```...) while mkdocstrings renders
Markdown, which would show the roles raw. Once the package is loaded, every
docstring's roles are rewritten:

- a target that resolves to an object this site renders (a ``::: path``
  directive in docs/, or a public member of one) becomes
  ``[`Title`][rendered.path]``, a link checked by ``mkdocs build --strict``;
- any other target (the standard library, httpx, a private helper) becomes
  inline code with the same title.

Names resolve as Sphinx resolves them: a dotted path from a package, else the
name in the docstring owner's scope, then its parents' (members, inherited
members, imports). ``~`` shows only the last component; ``title <target>``
sets the title; function and method titles get ``()``. A reST ``::`` that
opens a literal block becomes ``:``, or goes when alone on its line (the
indented block is already code in Markdown).

An ``Args:`` entry may name several parameters that share a description
(``name, clock, listeners: as RateLimiter.``): griffe would take the whole
list for one unknown parameter, so the entry is split into one per name.

Configured in mkdocs.yml under the python handler's ``options.extensions``.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import griffe

ROLE = re.compile(r":(?:py:)?(?P<role>class|meth|func|attr|exc|mod|data|obj|const):`(?P<body>[^`]+)`")
EXPLICIT_TITLE = re.compile(r"^(?P<title>.+?)\s*<(?P<target>[^<>]+)>$")
LITERAL_BLOCK = re.compile(r"(?<=\S)::(?=\n\s*\n)")
BARE_LITERAL_BLOCK = re.compile(r"^[ \t]*::[ \t]*\n(?=[ \t]*\n)", re.MULTILINE)
CALLABLE_ROLES = {"meth", "func"}
DIRECTIVE = re.compile(r"^:::\s*(?P<path>[\w.]+)\s*$", re.MULTILINE)
ARGS_SECTION = re.compile(r"^(?P<indent>[ \t]*)(Args|Arguments|Parameters|Keyword Args|Keyword Arguments):[ \t]*$")
SHARED_ENTRY = re.compile(r"^(?P<indent>[ \t]+)(?P<names>\w+(?:,[ \t]*\w+)+):(?P<text>[ \t].*)?$")


def split_shared_entries(doc: str) -> str:
    """``a, b: text`` in an Args section -> ``a: text`` and ``b: text``."""
    out: list[str] = []
    section_indent: int | None = None
    for line in doc.split("\n"):
        header = ARGS_SECTION.match(line)
        if header:
            section_indent = len(header["indent"])
        elif line.strip() and section_indent is not None and len(line) - len(line.lstrip()) <= section_indent:
            section_indent = None  # dedented: the section is over
        entry = SHARED_ENTRY.match(line) if section_indent is not None else None
        if entry:
            text = entry["text"] or ""
            out.extend(f"{entry['indent']}{name.strip()}:{text}" for name in entry["names"].split(","))
        else:
            out.append(line)
    return "\n".join(out)


def rendered_roots(docs_dir: Path) -> set[str]:
    """The object paths named by ``::: path`` directives in the docs."""
    roots: set[str] = set()
    for page in docs_dir.rglob("*.md"):
        roots.update(m["path"] for m in DIRECTIVE.finditer(page.read_text(encoding="utf-8")))
    return roots


def _public(name: str) -> bool:
    return not name.startswith("_") or (name.startswith("__") and name.endswith("__"))


def _walk(obj: griffe.Object) -> Iterator[griffe.Object]:
    yield obj
    for member in obj.members.values():
        if not member.is_alias:
            yield from _walk(member)  # type: ignore[arg-type]


class SphinxRoles(griffe.Extension):
    """Rewrites Sphinx roles in every docstring of the loaded packages."""

    def __init__(self, docs_dir: str = "docs") -> None:
        super().__init__()
        self.roots = rendered_roots(Path(docs_dir))

    def on_package(self, *, pkg: griffe.Module, loader: griffe.GriffeLoader, **kwargs: Any) -> None:
        """Rewrite the roles of every docstring in ``pkg``."""
        collection = loader.modules_collection
        anchors = self._anchors(collection)
        for obj in _walk(pkg):
            doc = obj.docstring
            if doc is None or ":" not in doc.value:
                continue
            value = split_shared_entries(doc.value)
            value = ROLE.sub(lambda m, o=obj: self._replace(m, o, collection, anchors), value)  # type: ignore[misc]
            value = BARE_LITERAL_BLOCK.sub("", LITERAL_BLOCK.sub(":", value))
            if value != doc.value:
                doc.value = value
                doc.__dict__.pop("parsed", None)  # drop a parse cached from the old text

    def _anchors(self, collection: griffe.ModulesCollection) -> dict[str, str]:
        """Canonical path -> the path under which the site renders that object."""
        anchors: dict[str, str] = {}

        def add(obj: griffe.Object | griffe.Alias, rendered: str, depth: int) -> None:
            try:
                target = obj.final_target if isinstance(obj, griffe.Alias) else obj
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                return
            anchors.setdefault(target.path, rendered)
            if depth == 0 or not isinstance(target, griffe.Object):
                return
            for name, member in target.members.items():
                if not _public(name):
                    continue
                if target.is_module and member.is_alias and not member.is_exported:
                    continue  # an import, not rendered
                try:
                    if member.is_module or not member.has_docstrings:
                        continue  # submodules and undocumented objects are not rendered
                except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                    continue
                add(member, f"{rendered}.{name}", depth - 1)

        for root in sorted(self.roots):
            try:
                obj = collection[root]
            except (KeyError, griffe.AliasResolutionError):
                continue
            # A module renders its members and their members (a class's methods).
            add(obj, root, 2)
        return anchors

    def _resolve(self, target: str, scope: griffe.Object, collection: griffe.ModulesCollection) -> str | None:
        """The canonical path of ``target`` seen from ``scope``, or None."""
        candidates: list[str] = []
        head, _, rest = target.partition(".")
        current: griffe.Object | None = scope
        while current is not None:
            members = current.all_members if current.is_class else current.members
            if head in members:
                found = members[head]
                candidates.append(found.path + (f".{rest}" if rest else ""))
            if head in current.imports:
                candidates.append(current.imports[head] + (f".{rest}" if rest else ""))
            current = current.parent
        candidates.append(target)
        for path in candidates:
            try:
                obj = collection[path]
            except (KeyError, griffe.AliasResolutionError, griffe.CyclicAliasError, ValueError):
                continue
            try:
                return str(obj.final_target.path if isinstance(obj, griffe.Alias) else obj.path)
            except (griffe.AliasResolutionError, griffe.CyclicAliasError):
                continue
        return None

    def _replace(
        self,
        match: re.Match[str],
        scope: griffe.Object,
        collection: griffe.ModulesCollection,
        anchors: dict[str, str],
    ) -> str:
        role, body = match["role"], match["body"].strip()
        explicit = EXPLICIT_TITLE.match(body)
        if explicit:
            title, target = explicit["title"], explicit["target"].strip()
        else:
            target = body
            title = body.lstrip("~.")
            if body.startswith("~"):
                title = title.rsplit(".", 1)[-1]
            if role in CALLABLE_ROLES:
                title += "()"
        target = target.lstrip("~.")
        path = self._resolve(target, scope, collection)
        anchor = anchors.get(path) if path else None
        if anchor is None:
            return f"`{title}`"
        return f"[`{title}`][{anchor}]"
