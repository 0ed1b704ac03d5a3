"""`dicomnode analyze`: the service's pipeline on a folder, without network or database."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from dicomnode.config import AIConfig, OutputConfig
from dicomnode.pipeline import AnalysisError, NoInput, analyse, get_analyzer, write_outputs


def collect_files(path: Path) -> list[Path]:
    if path.is_file():
        return [path]
    return sorted(p for p in path.rglob("*") if p.is_file() and not p.name.startswith("."))


def analyze_path(path: Path, out: Path, ai: AIConfig | None = None, output: OutputConfig | None = None,
                 png: bool = False) -> dict[str, Any]:
    """ai and output as in the service's configuration (defaults: the bundled ones), so an admin can reproduce
    what the node did with its own settings."""
    ai, output = ai or AIConfig(), output or OutputConfig()
    files = collect_files(path)
    if not files:
        return {"error": "no_input", "reason": f"no files under {path}", "levels": []}
    try:
        analysis = analyse(files, get_analyzer(ai.model, ai.device, ai.int8_graders), ai.candidate_slices)
    except NoInput as exc:
        return {"error": "no_input", "reason": str(exc), "levels": []}
    except AnalysisError as exc:
        return {"error": exc.code, "reason": exc.reason, "levels": []}
    written = write_outputs(analysis, out, 1, output, png=png)
    return dict(analysis.to_json(), files=[str(p) for p in written])
