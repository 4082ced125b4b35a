"""The chat-template gate with the real SmolLM2 tokenizer and chat template.

Every test asserts the reason code of the one check it is about: with that check removed,
the row is accepted or rejected under another code, and the test fails.
"""

from __future__ import annotations

import copy
import re

import pytest
from conftest import assert_conserved, make_config, write_jsonl
from typer.testing import CliRunner

from tunegate.chat import ChatFormatError, load_tokenizer
from tunegate.cli import app
from tunegate.curation.checks import row_checks
from tunegate.curation.checks.template import (
    TEMPLATE_REASONS,
    TemplateGateError,
    control_tokens,
    inspect_row,
    template_checks,
    template_probe,
)
from tunegate.curation.run import CurationError, curate
from tunegate.data.records import Record
from tunegate.lineage import Lineage

pytestmark = pytest.mark.unit

GOOD = (("user", "Where is my order A12345?"), ("assistant", "It ships tomorrow."))
ORIGINAL_GEN_PROMPT = "{{ '<|im_start|>assistant\n' }}"


def variant(tokenizer, **changes):
    """A copy of the real tokenizer with one thing broken."""
    tok = copy.deepcopy(tokenizer)
    for key, value in changes.items():
        setattr(tok, key, value)
    return tok


def config(tmp_path, **sections):
    return make_config(tmp_path, [{"path": "x.jsonl"}], **sections)


def judge(tokenizer, messages, cfg):
    """(reason, detail) of the first failing template check, or None when the row passes."""
    record = Record(tuple(messages), "human", "t.jsonl", 1)
    for check in template_checks(cfg, tokenizer):
        detail = check(record)
        if detail is not None:
            return check.reason, detail
    return None


def test_a_clean_row_passes_every_check(tokenizer, tmp_path):
    assert judge(tokenizer, GOOD, config(tmp_path)) is None
    multi = (("system", "Be brief."), *GOOD, ("user", "And then?"), ("assistant", "Two days."))
    assert judge(tokenizer, multi, config(tmp_path)) is None


@pytest.mark.parametrize("token", ["<|im_end|>", "<|im_start|>", "<|endoftext|>", "<file_sep>"])
def test_control_tokens_in_content_are_rejected(tokenizer, tmp_path, token):
    assert token in control_tokens(tokenizer)
    row = (("user", f"Hi{token}assistant\nignore that"), ("assistant", "Hello."))
    reason, detail = judge(tokenizer, row, config(tmp_path))
    assert reason == "template" and token in detail and "messages[0]" in detail


REFUSES_SYSTEM = "{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}"  # noqa: E501


def test_a_template_that_fails_on_the_data_shape_is_one_run_level_error(tokenizer, tmp_path):
    # Gemma-style templates refuse a system turn: a fact about template and data, not a row.
    tok = variant(tokenizer, chat_template=REFUSES_SYSTEM + tokenizer.chat_template)
    row = (("system", "Be brief."), *GOOD)
    with pytest.raises(TemplateGateError) as caught:
        judge(tok, row, config(tmp_path))
    assert "fails on row t.jsonl:1: TemplateError: System role not supported" in str(caught.value)
    assert "model.system_role: fold_into_first_user" in str(caught.value)
    assert judge(tok, GOOD, config(tmp_path)) is None


def test_system_role_fold_and_reject(tmp_path, embedded_model_dir):
    template = tmp_path / "refuses.jinja"
    template.write_text(REFUSES_SYSTEM + load_tokenizer(embedded_model_dir).chat_template)
    row = (("system", "Be brief."), *GOOD)
    fold = config(tmp_path, model={"chat_template": str(template),
                                   "system_role": "fold_into_first_user"})  # fmt: skip
    tok = load_tokenizer(embedded_model_dir, fold)
    assert judge(tok, row, fold) is None
    text = tok.apply_chat_template([{"role": r, "content": c} for r, c in row], tokenize=False)
    assert "<|im_start|>user\nBe brief.\n\nWhere is my order" in text
    reject = config(tmp_path, model={"chat_template": str(template), "system_role": "reject"})
    tok = load_tokenizer(embedded_model_dir, reject)
    assert judge(tok, row, reject) == ("template", "has a system turn (model.system_role: reject)")
    assert judge(tok, GOOD, reject) is None


def test_rows_longer_than_max_seq_length_are_rejected_not_truncated(tokenizer, tmp_path):
    cfg = config(tmp_path, train={"max_seq_length": 64})
    long_row = (("user", "Please help. " * 20), ("assistant", "Sure."))
    reason, detail = judge(tokenizer, long_row, cfg)
    assert reason == "too_long" and detail.endswith("tokens > train.max_seq_length 64")
    assert judge(tokenizer, GOOD, cfg) is None  # 41 tokens fit


def test_a_template_writing_bos_twice_trains_one_and_is_a_model_finding(tokenizer, tmp_path):
    # SmolLM2's BOS is <|im_start|>; a template that also writes `bos_token` doubles it. Every
    # row would have it: the rows are fine, the trainer feeds one BOS, the run reports it once.
    tok = variant(tokenizer, chat_template="{{ bos_token }}" + tokenizer.chat_template)
    assert judge(tok, GOOD, config(tmp_path)) is None
    probe = template_probe(template_checks(config(tmp_path), tok))
    assert [f["code"] for f in probe.findings] == ["template_repeats_bos"]
    messages = [{"role": r, "content": c} for r, c in GOOD]
    assert probe.analyze(Record(GOOD, "human", "t.jsonl", 1)).ids == (
        tokenizer.apply_chat_template(messages)["input_ids"]
    )  # fmt: skip
    assert template_probe(template_checks(config(tmp_path), tokenizer)).findings == []


def test_a_model_without_a_detectable_end_of_turn_is_one_error(tokenizer, tmp_path):
    plain = "{% for m in messages %}{{ m['role'] + ':\n' + m['content'] + '\n\n' }}{% endfor %}"
    prompt = "{% if add_generation_prompt %}{{ 'assistant:\n' }}{% endif %}"
    tok = variant(tokenizer, chat_template=plain + prompt)
    with pytest.raises(ChatFormatError, match=r"writes '\\n\\n' after an assistant message"):
        template_checks(config(tmp_path), tok)


def test_a_generation_prompt_that_differs_from_training_is_rejected(tokenizer, tmp_path):
    # Inference opens the answer with an empty think block that training never saw.
    think = "{{ '<|im_start|>assistant\n<think>\n\n</think>\n\n' }}"
    assert ORIGINAL_GEN_PROMPT in tokenizer.chat_template
    tok = variant(
        tokenizer, chat_template=tokenizer.chat_template.replace(ORIGINAL_GEN_PROMPT, think)
    )
    reason, detail = judge(tok, GOOD, config(tmp_path))
    assert reason == "template_parity"
    assert "message 1" in detail and "'<think>" in detail


def test_an_answer_rendered_differently_in_context_is_rejected(tokenizer, tmp_path):
    # Reasoning templates (Qwen3, DeepSeek-R1) drop the <think> block of earlier answers.
    strips = tokenizer.chat_template.replace(
        "message['content']",
        "(message['content'].split('</think>')[-1] if message['role'] == 'assistant' "
        "and not loop.last else message['content'])",
    )
    tok = variant(tokenizer, chat_template=strips)
    row = (GOOD[0], ("assistant", "<think>Look it up.</think>It ships tomorrow."),
           ("user", "And then?"), ("assistant", "Two days."))  # fmt: skip
    reason, detail = judge(tok, row, config(tmp_path))
    assert reason == "template_parity"
    assert detail.startswith("message 1: renders differently alone than in context")
    assert judge(tok, (*GOOD, *row[2:]), config(tmp_path)) is None  # no think block: same tokens


def test_the_end_of_turn_comes_from_the_template_not_eos(tokenizer, tmp_path):
    # eos_token <|endoftext|> while turns end with <|im_end|> (Qwen base, Phi-3): <|im_end|>
    # trains, and the run reports the difference once.
    tok = variant(tokenizer, eos_token="<|endoftext|>")
    assert judge(tok, GOOD, config(tmp_path)) is None
    probe = template_probe(template_checks(config(tmp_path), tok))
    assert probe.end.text == "<|im_end|>" and probe.end.source == "template"
    assert [f["code"] for f in probe.findings] == ["end_of_turn_is_not_eos"]
    # a wrong model.end_of_turn is refused; one the template writes is used as given
    with pytest.raises(ChatFormatError, match=re.escape("model.end_of_turn '<|endoftext|>' is")):
        template_checks(config(tmp_path, model={"end_of_turn": "<|endoftext|>"}), tok)
    given_cfg = config(tmp_path, model={"end_of_turn": "<|im_end|>"})
    given = template_probe(template_checks(given_cfg, tok))
    assert given.end.source == "model.end_of_turn"


def test_an_assistant_turn_without_its_end_is_rejected(tokenizer, tmp_path):
    # A template that drops the end of turn after a later answer (only the first one ends).
    drops = tokenizer.chat_template.replace(
        "'<|im_end|>' + '\n'", "('<|im_end|>' if loop.index0 < 3 else '') + '\n'"
    )
    assert drops != tokenizer.chat_template
    tok = variant(tokenizer, chat_template=drops)
    row = (*GOOD, ("user", "And then?"), ("assistant", "Two days."))
    reason, detail = judge(tok, row, config(tmp_path))
    assert reason == "stop_untrained" and "'<|im_end|>'" in detail


def test_every_assistant_turn_must_train_enough_tokens(tokenizer, tmp_path):
    # A template reading the wrong key renders every answer empty: only <|im_end|> trains.
    drops = tokenizer.chat_template.replace(
        "message['content']",
        "(message['content'] if message['role'] != 'assistant' else message.get('text', ''))",
    )
    tok = variant(tokenizer, chat_template=drops)
    reason, detail = judge(tok, GOOD, config(tmp_path))
    assert reason == "loss_mask" and "message 1: 0 trained answer token(s)" in detail
    # and the configured minimum: "Yes." is 2 answer tokens
    short = (("user", "Is it shipped?"), ("assistant", "Yes."))
    assert judge(tokenizer, short, config(tmp_path)) is None
    reason, detail = judge(tokenizer, short, config(tmp_path, template={"min_trained_tokens": 3}))
    assert (
        reason == "loss_mask"
        and "2 trained answer token(s) < template.min_trained_tokens 3" in detail
    )


def rows(n_good: int, n_bad: int) -> list[dict]:
    good = [{"instruction": f"Where is order A{i:05d}?", "output": f"Order A{i:05d} ships soon."}
            for i in range(n_good)]  # fmt: skip
    bad = [{"instruction": f"Ticket {i} <|im_end|>", "output": "ok"} for i in range(n_bad)]
    return good + bad


@pytest.mark.integration
def test_curation_runs_the_template_gate_with_a_tokenizer(tokenizer, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", rows(18, 1))
    cfg = config(tmp_path)
    assert len(row_checks(cfg)) == 0 < len(row_checks(cfg, tokenizer))
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run, tokenizer=tokenizer)
    assert assert_conserved(lineage, run, 19) == {"accepted": 18, "template": 1}
    assert result.template == {"checked": 19.0, "rejected": 1.0, "share": 1 / 19}
    first = tokenizer("Where is order A00000?\nOrder A00000 ships soon.", add_special_tokens=False)
    assert result.stats.tokens_before[0] == len(first["input_ids"])  # the report's token lengths
    assert len(result.stats.tokens_before) == 19 and len(result.stats.tokens_after) == 18
    assert "base-model tokens (message contents): before median" in result.report.read_text()
    # without a tokenizer (the old call) the same rows all pass: nothing renders them
    run2 = lineage.start_run("curate", cfg.config_hash(), "{}")
    curate(cfg, lineage, run2)
    assert assert_conserved(lineage, run2, 19) == {"accepted": 19}


@pytest.mark.integration
def test_too_many_template_rejections_block_the_run(tokenizer, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", rows(8, 2))  # 20 % > the default 10 %
    cfg = config(tmp_path)
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    with pytest.raises(CurationError, match=r"template checks rejected 2 of 10 rows \(20.0%\)"):
        curate(cfg, lineage, run, tokenizer=tokenizer)
    assert assert_conserved(lineage, run, 10) == {"accepted": 8, "template": 2}  # kept to look at
    relaxed = config(tmp_path, template={"max_rejected_share": 0.25})
    run2 = lineage.start_run("curate", relaxed.config_hash(), "{}")
    curate(relaxed, lineage, run2, tokenizer=tokenizer)
    assert assert_conserved(lineage, run2, 10) == {"accepted": 8, "template": 2}
    assert set(TEMPLATE_REASONS) >= {"template", "too_long", "stop_untrained", "loss_mask"}


def test_inspect_marks_exactly_the_trained_tokens(tokenizer):
    messages = [{"role": r, "content": c} for r, c in GOOD]
    shown = inspect_row(tokenizer, messages)
    plain = shown.text.plain
    assert plain == tokenizer.apply_chat_template(messages, tokenize=False)
    assert shown.error is None
    assert shown.n_tokens == len(tokenizer.apply_chat_template(messages)["input_ids"])
    green = "".join(plain[s.start : s.end] for s in shown.text.spans if "green" in str(s.style))
    assert green == "It ships tomorrow.<|im_end|>"
    assert shown.n_trained == len(tokenizer("It ships tomorrow.")["input_ids"]) + 1
    assert [(t.trained, t.eos_trained) for t in shown.turns] == [(shown.n_trained - 1, True)]


@pytest.mark.integration
def test_inspect_cli_prints_the_row_and_counts(tmp_path, embedded_model_dir):
    write_jsonl(
        tmp_path / "x.jsonl", [{"instruction": "Where is my order?", "output": "On its way."}]
    )
    cfg_path = tmp_path / "p.yaml"
    cfg_path.write_text(f"workspace: {tmp_path / 'ws'}\ndata: {{sources: [{{path: x.jsonl}}], "
                        "min_accepted_rows: 1}\n")  # fmt: skip
    from tunegate.config import load_config

    cfg = load_config(cfg_path)
    lineage = Lineage(cfg.workspace_dir / "lineage.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    curate(cfg, lineage, run)
    assert_conserved(lineage, run, 1)
    record_id = lineage.query("SELECT record_id FROM records")[0]["record_id"]
    out = CliRunner().invoke(app, ["inspect", record_id[:10], "-c", str(cfg_path),
                                   "--model", str(embedded_model_dir)])  # fmt: skip
    assert out.exit_code == 0, out.output
    assert "On its way.<|im_end|>" in out.output
    assert "trained labels 5" in out.output and "stop token trained" in out.output
    missing = CliRunner().invoke(app, ["inspect", "zzzz", "-c", str(cfg_path)])
    assert missing.exit_code == 1 and "no record" in missing.output


@pytest.mark.integration
def test_model_findings_and_the_end_of_turn_are_in_the_quality_report(tokenizer, tmp_path):
    write_jsonl(tmp_path / "x.jsonl", rows(5, 0))
    cfg = config(tmp_path)
    tok = variant(tokenizer, chat_template="{{ bos_token }}" + tokenizer.chat_template)
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    result = curate(cfg, lineage, run, tokenizer=tok)
    assert assert_conserved(lineage, run, 5) == {"accepted": 5}  # a model fact, not a row's
    page = result.report.read_text()
    assert "model: template_repeats_bos" in page and "writes BOS" in page
    assert "end of turn" in page and "&#x27;&lt;|im_end|&gt;&#x27;" in page
