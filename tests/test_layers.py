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


def test_the_code_location_loads_without_the_model_libraries():
    """The daemon starts a fresh code server every minute to refresh its workspace (and the
    webserver one per location): importing torch, transformers and timm there cost each about
    10 s of CPU and 1 GB (issue 20). Only a run that executes a model imports them."""
    import subprocess
    import sys

    probe = (
        "import sys, code_location.definitions, sensors.uploads;"
        "print(sorted(m for m in ('torch', 'transformers', 'timm', 'pytorch_grad_cam') if m in sys.modules))"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert done.stdout.strip() == "[]", done.stdout


def test_loading_the_code_location_prints_no_warning():
    """Every code server and every run loads it; a warning there lands in each run's log."""
    import subprocess
    import sys

    probe = (
        "import warnings; warnings.simplefilter('default');"
        "from code_location.definitions import defs; repo = defs.get_repository_def();"
        "[repo.get_job(j.name) for j in repo.get_all_jobs()]"
    )
    done = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert "Warning" not in done.stderr, done.stderr
