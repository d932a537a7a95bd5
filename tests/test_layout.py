"""The layout's rules, read from the code (docs/development.md): only app/web/ and app/local/ import Flask, and
the stages below the view never import the web side."""
from __future__ import annotations

import ast

from support import ROOT

APP = ROOT / "app"
ENTRY_POINTS = (APP / "__init__.py", APP / "__main__.py")  # create_app() and `python -m app` put the parts together


def imported_modules(path) -> set[str]:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_only_the_web_and_local_folders_import_flask():
    outside = [path.relative_to(ROOT) for path in APP.rglob("*.py")
               if path.parent.name not in ("web", "local") and path not in ENTRY_POINTS
               and any(name.split(".")[0] == "flask" for name in imported_modules(path))]
    assert outside == []


def test_nothing_below_the_web_folder_imports_it():
    below = [path.relative_to(ROOT) for path in APP.rglob("*.py")
             if path.parent.name not in ("web", "local") and path not in ENTRY_POINTS
             and any(name.startswith(("app.web", "app.local")) for name in imported_modules(path))]
    assert below == []
