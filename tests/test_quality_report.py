"""The quality report renders (headless Chromium when installed) and the CLI exports rows."""

import json
import shutil
import subprocess

import pytest
from conftest import make_config, write_jsonl
from typer.testing import CliRunner

from tunegate.cli import app
from tunegate.curate import curate
from tunegate.lineage import Lineage

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
    return curate(cfg, lineage, run), cfg, run


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


def test_report_renders_in_headless_chromium(curated, tmp_path):
    browser = shutil.which("chromium") or shutil.which("chromium-browser")
    if browser is None:
        pytest.skip("chromium not installed (apt-get install -y chromium)")
    result, _, _ = curated
    shot = tmp_path / "report.png"
    profile = tmp_path / "chromium-profile"
    subprocess.run([browser, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic",
                    "--no-first-run", "--disable-background-networking",
                    "--disable-component-update", "--disable-sync",
                    f"--user-data-dir={profile}", "--window-size=1280,2400",
                    f"--screenshot={shot}", result.report.as_uri()],
                   check=True, capture_output=True, timeout=120)  # fmt: skip
    from PIL import Image

    with Image.open(shot) as img:
        assert img.size == (1280, 2400)
        colours = img.convert("RGB").resize((64, 120)).getcolors(64 * 120)
    assert colours is not None and len(colours) > 20  # text and charts, not a blank page


def test_verdicts_cli_lists_filters_and_exports_rejected_rows(curated, tmp_path):
    _, cfg, run = curated
    ws = str(cfg.workspace_dir)
    listed = CliRunner().invoke(app, ["verdicts", "-w", ws, "--run", run, "--reason", "schema"])
    assert listed.exit_code == 0, listed.output
    assert "schema" in listed.output and "exact_duplicate" not in listed.output
    out = tmp_path / "rejected.jsonl"
    done = CliRunner().invoke(app, ["verdicts", "-w", ws, "--export", str(out)])
    assert done.exit_code == 0, done.output
    rows = {r["source_row"]: r for r in map(json.loads, out.read_text().splitlines())}
    assert set(rows) == {2, 4, 5}
    assert rows[4]["raw"] == '{"instruction": "cut off' and "not valid JSON" in rows[4]["detail"]
    assert rows[2]["reason"] == "exact_duplicate" and rows[2]["duplicate_of"].endswith(":1")
    assert json.loads(rows[5]["raw"])["output"] == "" and rows[5]["stage"] == "contract"
