"""The lower layer (dagster_deepfake/) imports neither Dagster nor anything of the layer above
(docs/ARCHITECTURE.md §2); the check reads every import statement, including function-local ones."""

from __future__ import annotations

import ast

from dagster_deepfake.config import PACKAGE_DIR

UPPER = {"dagster", "assets", "resources", "sensors", "launchers", "code_location", "commands"}


def _imports(tree: ast.AST) -> set[str]:
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            found |= {alias.name.split(".")[0] for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module.split(".")[0])
    return found


def test_lower_layer_never_imports_the_upper_layer():
    offenders = {}
    files = sorted(PACKAGE_DIR.rglob("*.py"))
    assert len(files) > 40  # the whole library was read
    for path in files:
        bad = _imports(ast.parse(path.read_text(), str(path))) & UPPER
        if bad:
            offenders[str(path.relative_to(PACKAGE_DIR.parent))] = sorted(bad)
    assert not offenders, offenders


def test_artifact_paths_are_spelled_in_one_module():
    """Path literals such as "videos/…" or "tables/…" appear only in storage/layout.py."""
    spelled = []
    for path in sorted(PACKAGE_DIR.rglob("*.py")):
        if path.name == "layout.py":
            continue
        for node in ast.walk(ast.parse(path.read_text())):
            is_str = isinstance(node, ast.Constant) and isinstance(node.value, str)
            if is_str and node.value.startswith(("videos/", "tables/", "datasets/", "models/")):
                spelled.append(f"{path.name}: {node.value!r}")
    assert not spelled, spelled
