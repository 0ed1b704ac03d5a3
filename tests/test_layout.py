"""The tree as the README's "How the code is laid out" describes it: imports go one way (no cycle among the
project's modules, counting imports inside functions too), and the admin's commands never load torch."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("ai", "dicomnode", "storage")


def project_imports() -> dict[str, set[str]]:
    """module -> the project modules it imports anywhere in its body."""
    files = {}
    for pkg in PACKAGES:
        for path in (ROOT / pkg).rglob("*.py"):
            name = ".".join(path.relative_to(ROOT).with_suffix("").parts)
            files[name.removesuffix(".__init__")] = path
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        found = set()
        for node in ast.walk(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                found |= {a.name for a in node.names}
            elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                found |= {node.module} | {f"{node.module}.{a.name}" for a in node.names}
        graph[name] = {m for m in found if m in files and m != name and not name.startswith(m + ".")}
    return graph


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for dep in sorted(graph[node]):
            if state.get(dep) == 1:
                return path[path.index(dep) :] + [dep]
            if dep not in state and (cycle := visit(dep)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (cycle := visit(start)):
            return cycle
    return None


def test_the_walker_finds_a_cycle():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set(), "c": {"a", "b"}}) is None


def test_no_import_cycle_among_the_projects_modules():
    graph = project_imports()
    assert {"dicomnode.receive", "dicomnode.complete", "dicomnode.worker", "ai.infer", "storage.db"} <= set(graph)
    assert find_cycle(graph) is None


def test_runtime_never_imports_training_code():
    graph = project_imports()
    training = {m for m in graph if m.startswith("ai.training")}  # every training tool lives there
    assert {"ai.training.train", "ai.training.ensemble", "ai.training.quantize"} <= training

    def reach(start: str) -> set[str]:
        seen, todo = set(), [start]
        while todo:
            for dep in graph[todo.pop()] - seen:
                seen.add(dep)
                todo.append(dep)
        return seen

    for runtime in ("ai.infer", "dicomnode.worker", "dicomnode.service", "dicomnode.report.outputs"):
        assert not reach(runtime) & training, runtime


def test_admin_commands_load_no_torch(tmp_path: Path):
    config = tmp_path / "node.toml"
    config.write_text(f'[node]\ndata_dir = "{tmp_path / "var"}"\n')
    probe = (
        "import io, json, sys, contextlib\n"
        "import dicomnode.cli as cli\n"
        "assert 'torch' not in sys.modules, 'import dicomnode.cli'\n"
        "for argv in (['jobs', '--json'], ['status', '--json'], ['retry', '7']):\n"
        "    with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):\n"
        f"        cli.main([*argv, '--config', {str(config)!r}])\n"
        "    assert 'torch' not in sys.modules, argv\n"
        "print(json.dumps(sorted(m for m in sys.modules if m.split('.')[0] in ('torch', 'torchvision', 'ai'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert set(json.loads(out.stdout)) <= {"ai", "ai.labels"}  # status names the reviewers' calls: constants only


def test_the_conformance_statement_lists_every_reason_code_and_no_other():
    import re

    from storage.states import REASONS

    text = (ROOT / "docs" / "conformance-statement.md").read_text()
    listed = text.split("## Reason codes", 1)[1].split("##", 1)[0].split("(a stable list):", 1)[1]
    assert re.findall(r"`([a-z_0-9]+)`", listed) == list(REASONS)
