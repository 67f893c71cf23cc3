"""The harness's stages import only from the stages below them, so the tree reads as the pipeline."""
import ast
from pathlib import Path

import pytest

PROFILER = Path(__file__).resolve().parent.parent / "profiler"
# Bottom to top; a module may import from its own stage or any stage before it.
STAGES = ["units", "results", "trackers", "run", "analysis", "present", "reproduce", "bench", "api", "cli"]


def stage_of(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 and parts[0] == "profiler" else ""


def profiler_imports(path: Path) -> list[str]:
    found = []
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.module and node.module.startswith("profiler"):
            found.append(node.module if node.module != "profiler" else f"profiler.{node.names[0].name}")
        elif isinstance(node, ast.Import):
            found.extend(alias.name for alias in node.names if alias.name.startswith("profiler"))
    return found


MODULES = sorted(p for p in PROFILER.rglob("*.py"))


def test_every_module_belongs_to_a_known_stage():
    stages = {p.relative_to(PROFILER).parts[0].removesuffix(".py") for p in MODULES if p.name != "__init__.py" or p.parent != PROFILER}
    assert stages == set(STAGES)


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PROFILER)))
def test_imports_point_down_the_pipeline(path):
    own = path.relative_to(PROFILER).parts[0].removesuffix(".py")
    if own == "__init__":
        return
    upward = [m for m in profiler_imports(path) if STAGES.index(stage_of(m)) > STAGES.index(own)]
    assert not upward, f"{path.relative_to(PROFILER)} imports from a later stage: {upward}"
