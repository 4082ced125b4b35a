"""The quality report renders (headless Chromium when installed) and the CLI exports rows."""

import json
import re
from pathlib import Path

import pytest
from browser import chromium, is_blank, needs_chromium
from conftest import assert_conserved, make_config, write_jsonl
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.curation.run import curate
from tunegate.lineage import Lineage

pytestmark = pytest.mark.integration

ROWS = [
    {"instruction": "Name a colour.", "output": "Blue is a colour people often name first."},
    {"instruction": "name a colour. ", "output": "blue is a colour people often name  first."},
    {"instruction": "Name a fruit.", "output": "An apple is a fruit that grows on trees."},
    '{"instruction": "cut off',
    {"instruction": "Empty answer", "output": ""},
]


@pytest.fixture()
def curated(tmp_path):
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    cfg = make_config(tmp_path, [{"path": "rows.jsonl"}])
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run)
    lineage.end_run(run, "completed")  # as `tunegate curate` does: readers skip unfinished runs
    counts = assert_conserved(lineage, run, len(ROWS))
    assert counts == {"accepted": 2, "exact_duplicate": 1, "schema": 2}
    return result, cfg, run


def test_report_has_every_section(curated):
    result, _, run = curated
    html = result.report.read_text()
    assert result.report.name == "quality.html" and result.report.parent.name == run
    for section in ("Funnel: rows per stage", "Verdicts by reason", "Per source",
                    "Conversation length, before and after", "Duplicate clusters",
                    "Examples per reason", "Batch expectations"):  # fmt: skip
        assert section in html
    assert html.count("data:image/png;base64,") == 2  # funnel chart and length histogram
    assert "href='gx/index.html'" in html and (result.report.parent / "gx/index.html").is_file()
    assert "cut off" in html  # the raw text of the row that did not parse


def test_every_local_link_of_the_report_resolves(curated):
    result, _, _ = curated
    html = result.report.read_text()
    links = [h for h in re.findall(r"href='([^']+)'", html) if not h.startswith(("http", "#"))]
    assert "gx/index.html" in links and any(h.startswith("gx/validations/") for h in links)
    assert all((result.report.parent / h).is_file() for h in links), links


@needs_chromium
def test_report_and_data_docs_render_in_headless_chromium(curated, tmp_path):
    """The page a person opens: sections, decoded charts, and the GX links followed offline."""
    result, _, _ = curated
    with chromium(tmp_path / "profile") as browser:
        browser.get(result.report.as_uri())
        assert browser.text("h1").startswith("Data quality report")
        headings = set(browser.texts("h2"))
        assert {"Examples per reason", "Batch expectations (Great Expectations)"} <= headings
        widths = browser.script("return [...document.images].map(e => e.naturalWidth)")
        assert len(widths) == 2 and min(widths) > 0  # funnel chart and length histogram decode
        assert not is_blank(browser.screenshot(tmp_path / "report.png"))
        browser.click_through("a[href^='gx/validations/']")  # this run's GX validation result
        page = browser.script("return document.body.innerText")
        assert "Expectation Validation Result" in page and "Succeeded" in page
        assert "values must be unique" in page  # an expectation of schemas/curated_batch.json
        assert not is_blank(browser.screenshot(tmp_path / "validation.png"))
        browser.get(result.report.as_uri())
        # The Data Docs index needs CDN scripts for its tables; offline its headings still show.
        browser.click_through("a[href='gx/index.html']")
        assert "Validation Results" in browser.script("return document.body.innerText")


def test_verdicts_cli_lists_filters_and_exports_rejected_rows(curated, tmp_path):
    _, cfg, run = curated
    ws = str(cfg.workspace_dir)
    listed = CliRunner().invoke(app, ["verdicts", "-w", ws, "--run", run, "--reason", "schema"])
    assert listed.exit_code == 0, listed.output
    assert "schema" in listed.output and "exact_duplicate" not in listed.output
    # The source column is narrow at 80 columns: the path is folded over lines, not cut.
    folded = "".join(line.split("│")[1].strip() for line in listed.output.splitlines()
                     if line.count("│") > 2)  # fmt: skip
    assert "…" not in listed.output and str(cfg.data.sources[0].path) in folded
    out = tmp_path / "rejected.jsonl"
    done = CliRunner().invoke(app, ["verdicts", "-w", ws, "--export", str(out)])
    assert done.exit_code == 0, done.output
    rows = {r["source_row"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {2, 4, 5}
    assert rows[4]["raw"] == '{"instruction": "cut off' and "not valid JSON" in rows[4]["detail"]
    assert rows[2]["reason"] == "exact_duplicate" and rows[2]["duplicate_of"].endswith(":1")
    assert json.loads(rows[5]["raw"])["output"] == "" and rows[5]["stage"] == "contract"


def test_curate_cli_then_inspect_a_row_of_that_run(tmp_path, embedded_model_dir):
    """`tunegate curate CONFIG` as a user runs it, then `tunegate inspect` on a row it accepted."""
    synthetic = {"messages": [{"role": "user", "content": "Where is order A12345?"},
                              {"role": "assistant", "content": "Let me check. I hope this helps!"}],
                 "origin": "synthetic"}  # fmt: skip
    write_jsonl(tmp_path / "rows.jsonl", ROWS)
    write_jsonl(tmp_path / "synthetic.jsonl", [synthetic])
    config = tmp_path / "pipeline.yaml"
    config.write_text(
        "workspace: ws\ndata: {sources: [{path: rows.jsonl}, {path: synthetic.jsonl}], "
        "min_accepted_rows: 1}\n"
        f"model: {{base_model: {embedded_model_dir}}}\n"
        "contracts: {batch_suite: null}\n"  # GX passes or fails on its own bounds; not under test
    )
    out = CliRunner().invoke(app, ["curate", str(config)])
    assert out.exit_code == 0, out.output
    lineage = Lineage(tmp_path / "ws" / "lineage.duckdb")
    run = lineage.query("SELECT run_id FROM runs WHERE flow = 'curate'")[0]["run_id"]
    counts = assert_conserved(lineage, run, len(ROWS) + 1)
    assert counts == {"accepted": 2, "exact_duplicate": 1, "schema": 2, "review_pending": 1}
    printed = " ".join(out.output.split())  # rich wraps lines at the terminal width
    assert re.search(rf"curation {run} ?: 6 rows", printed) and "funnel per stage" in printed
    assert (tmp_path / "reports" / run / "quality.html").is_file() and "quality.html" in printed
    assert f"tunegate review serve --run {run}" in printed  # the boilerplate answer waits
    # the accepted rows are a snapshot `tunegate train CONFIG` takes (the latest by default)
    (snap,) = lineage.query("SELECT * FROM snapshots WHERE run_id = ?", [run])
    assert snap["n_records"] == 2 and f"snapshot {snap['snapshot_id']}" in printed
    assert lineage.snapshot(None)["snapshot_id"] == snap["snapshot_id"]
    assert len(Path(snap["path"]).read_text().splitlines()) == 2
    accepted = lineage.query("SELECT record_id FROM row_verdicts WHERE run_id = ? AND "
                             "status = 'accepted' ORDER BY source_row", [run])  # fmt: skip
    shown = CliRunner().invoke(app, ["inspect", accepted[0]["record_id"][:12], "-c", str(config)])
    assert shown.exit_code == 0, shown.output
    assert "Blue is a colour people often name first.<|im_end|>" in shown.output
    assert "stop token trained" in shown.output and "end of turn '<|im_end|>'" in shown.output
