"""Run reports: Markdown tables a data team and a release reviewer read.

The same Markdown goes into Prefect artifacts and into `reports/<run id>/summary.md`.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from tunegate.lineage import REASON_CODES
from tunegate.release.gates import GateResult
from tunegate.render import markdown_table


def funnel_markdown(n_input: int, reasons: dict[str, int]) -> str:
    rows = [
        (k, n, REASON_CODES.get(k, "")) for k, n in sorted(reasons.items(), key=lambda kv: -kv[1])
    ]
    return f"**{n_input} input rows**\n\n" + markdown_table(["verdict", "rows", "meaning"], rows)


def metrics_markdown(base: dict[str, tuple[float, float | None]],
                     adapter: dict[str, tuple[float, float | None]]) -> str:  # fmt: skip
    rows = []
    for name in sorted(set(base) | set(adapter)):
        b, a = base.get(name, (float("nan"), None))[0], adapter.get(name, (float("nan"), None))[0]
        rows.append((name, b, a, a - b))
    return markdown_table(["metric", "base", "adapter", "gain"], rows)


def gates_markdown(gates: Sequence[GateResult]) -> str:
    """Every gate's outcome (pass, FAIL, inconclusive), value, threshold, items and reason."""
    rows = [(g.gate, "FAIL" if g.outcome == "fail" else g.outcome, g.value, g.threshold, g.n,
             g.reason) for g in gates]  # fmt: skip
    return markdown_table(["gate", "outcome", "value", "threshold", "items", "reason"], rows)


def write_report(reports_dir: Path, run_id: str, sections: dict[str, str]) -> Path:
    """Write `reports/<run id>/summary.md` from titled Markdown sections."""
    out = reports_dir / run_id
    out.mkdir(parents=True, exist_ok=True)
    body = "\n\n".join(f"## {title}\n\n{text}" for title, text in sections.items())
    path = out / "summary.md"
    path.write_text(f"# tunegate run {run_id}\n\n{body}\n")
    return path
