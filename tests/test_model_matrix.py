"""Bring your own model: every mainstream family, base and instruct, trains right.

Tiny random models of each architecture with the family's REAL tokenizer and official
template (`tests/model_matrix.py`). For each: the template gate accepts every clean sample
row; the labels are exactly the answer plus the family's end-of-turn token, after exactly one
BOS; padding-free batches give each row the logits it gets alone (sliding windows, Gemma's
soft-capping, tied embeddings); and (slow) QLoRA trains 2 steps, the adapter's generation
config stops at the end of turn, the merged export matches base + adapter, and GGUF export
works or refuses clearly.
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest
from conftest import REPO, make_config
from model_matrix import BY_NAME, FAMILIES, Family, build_model
from test_sample_data import planted_defects

from tunegate.chat import end_of_turn, load_tokenizer, render_ids, tokenize_chat
from tunegate.curation.checks.template import TEMPLATE_REASONS, template_checks, template_probe
from tunegate.curation.run import curate_records

pytestmark = [pytest.mark.integration, pytest.mark.usefixtures("one_torch_thread")]
IDS = [f.name for f in FAMILIES]
SYSTEM = "Classify the support ticket. Reply with JSON only, keys: intent, priority, order_id."
CHATS = [
    [{"role": "system", "content": SYSTEM},
     {"role": "user", "content": "Where is my order A12345? It has not moved in a week."},
     {"role": "assistant", "content": '{"intent": "shipping_delay", "priority": "high"}'}],
    [{"role": "user", "content": "How do I reset my password?"},
     {"role": "assistant", "content": "Use the 'Forgot password' link on the login page."},
     {"role": "user", "content": "And if I no longer have that email?"},
     {"role": "assistant", "content": "Contact support with your account id."}],
]  # fmt: skip
# Qwen3's template opens the last answer with an empty think block (its generation prompt
# writes "<think>\n\n", the answer closes it), and drops it from earlier answers: multi-turn
# rows render differently in context (`template_parity`).
ANSWER_PREFIX = {"qwen3": "</think>\n\n"}  # its generation prompt opens "<think>\n\n"


def config_for(family: Family, tmp_path: Path, **overrides: object):
    return make_config(tmp_path, [{"path": str(REPO / "datasets" / "raw")}],
                       model=family.pipeline_model(), **overrides)  # fmt: skip


@pytest.fixture(scope="module", params=FAMILIES, ids=IDS)
def family(request, tmp_path_factory):
    """(family, model dir, config, tokenizer as the pipeline loads it), built once per family."""
    fam = request.param
    model_dir = build_model(fam)
    cfg = config_for(fam, tmp_path_factory.mktemp(fam.name), contamination={"enabled": False})
    return fam, model_dir, cfg, load_tokenizer(model_dir, cfg)


def chats_for(family: Family) -> list[list[dict[str, str]]]:
    return CHATS[:1] if family.template == "qwen3" else CHATS


def labelled_spans(ids: list[int], mask: list[int]) -> list[list[int]]:
    spans: list[list[int]] = []
    for i, bit in enumerate(mask):
        if bit and (i == 0 or not mask[i - 1]):
            spans.append([])
        if bit:
            spans[-1].append(ids[i])
    return spans


def test_labels_are_the_answer_and_the_familys_end_of_turn(family):
    fam, _, _, tokenizer = family
    end = end_of_turn(tokenizer)
    assert end.text == fam.end and end.source == "template"
    prefix = ANSWER_PREFIX.get(fam.template, "")
    for messages in chats_for(fam):
        chat = tokenize_chat(tokenizer, messages, end)
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        spans = labelled_spans(chat.input_ids, chat.assistant_mask)
        assert len(spans) == len(answers)
        for span, answer in zip(spans, answers, strict=True):
            assert span[-len(end.ids) :] == list(end.ids)
            text = tokenizer.decode(span[: -len(end.ids)])
            assert text.strip() == (prefix + answer).strip(), (text, answer)
        bos = tokenizer.bos_token_id
        if bos is not None and fam.template != "chatml":  # one BOS, first, whatever the family
            assert chat.input_ids[0] == bos and chat.input_ids.count(bos) == 1


def test_padding_free_batches_give_each_row_its_own_logits(family):
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

    _, model_dir, _, tokenizer = family
    model = AutoModelForCausalLM.from_pretrained(model_dir).eval()
    rows = [render_ids(tokenizer, m) for m in CHATS]
    window = getattr(model.config, "sliding_window", None) or 0
    assert min(map(len, rows)) > window  # the window, where there is one, is in play
    collate = DataCollatorForLanguageModeling(tokenizer.pad_token_id, padding_free=True)
    batch = collate([{"input_ids": r} for r in rows])
    with torch.no_grad():
        packed = model(input_ids=batch["input_ids"], position_ids=batch["position_ids"],
                       use_cache=False).logits[0]  # fmt: skip
        alone = [model(input_ids=torch.tensor([r]), use_cache=False).logits[0] for r in rows]
    torch.testing.assert_close(packed, torch.cat(alone), atol=1e-5, rtol=1e-5)


def test_the_template_gate_accepts_every_clean_sample_row(family):
    fam, _, cfg, tokenizer = family
    checks = template_checks(cfg, tokenizer)
    result = curate_records(cfg, checks=checks)
    planted = {key for key, (kind, _) in planted_defects().items() if kind == "control_token"}
    wrong = [(Path(v.source).name, v.source_row, v.reason, v.detail) for v in result.verdicts
             if v.reason in TEMPLATE_REASONS
             and (Path(v.source).name, v.source_row) not in planted]  # fmt: skip
    assert not wrong
    assert len(result.accepted) >= 400
    codes = {f["code"] for f in template_probe(checks).findings}
    assert ("double_bos" in codes) == (fam.tokenizer in ("llama3", "gemma", "mistral", "phi3"))
    assert ("end_of_turn_is_not_eos" in codes) == (fam.eos != fam.end)


# -- slow: QLoRA, export ---------------------------------------------------------------------------


@pytest.mark.slow
def test_qlora_trains_and_the_export_stops_at_the_end_of_turn(family, tmp_path):
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, GenerationConfig

    from tunegate.data.snapshot import write_snapshot
    from tunegate.models import BaseModel, sha256_dir
    from tunegate.release.export import ExportError, load_trained_base, merge_adapter, write_gguf

    fam, model_dir, _, tokenizer = family
    cfg = config_for(
        fam, tmp_path,
        train={"max_steps": 2, "batch_size": 2, "gradient_accumulation_steps": 1,
               "validation_fraction": 0.0, "checkpoint_steps": 0, "compute_dtype": "float32",
               "learning_rate": 0.01, "logging_steps": 1},
        lora={"r": 4, "alpha": 8},
    )  # fmt: skip
    from tunegate.data.records import Record

    records = [Record(tuple((m["role"], m["content"]) for m in c), "human", "x", k)
               for k, c in enumerate(chats_for(fam) * 2)]  # fmt: skip
    snap = write_snapshot(records, tmp_path / "snapshots")
    base = BaseModel(str(model_dir), model_dir, sha256_dir(model_dir))
    from tunegate.training.train import train_adapter

    result = train_adapter(cfg, base, snap.path, tmp_path / "adapter")
    assert result.steps == 2
    manifest = json.loads((result.adapter_dir / "manifest.json").read_text())
    end_id = tokenizer.convert_tokens_to_ids(fam.end)
    assert manifest["chat"]["end_of_turn"] == fam.end
    stops = GenerationConfig.from_pretrained(result.adapter_dir).eos_token_id
    assert (stops if isinstance(stops, list) else [stops])[0] == end_id

    merged = merge_adapter(result.adapter_dir, model_dir, tmp_path / "merged")
    stops = GenerationConfig.from_pretrained(merged.path).eos_token_id
    assert (stops if isinstance(stops, list) else [stops])[0] == end_id
    ids = torch.tensor([render_ids(tokenizer, CHATS[0])])
    with torch.no_grad():
        standalone = AutoModelForCausalLM.from_pretrained(merged.path).eval()(input_ids=ids)
        trained = PeftModel.from_pretrained(load_trained_base(model_dir, "nf4"),
                                            result.adapter_dir).eval()(input_ids=ids)  # fmt: skip
    torch.testing.assert_close(standalone.logits, trained.logits, atol=1e-4, rtol=1e-4)

    gguf = tmp_path / "model.gguf"
    if fam.arch == "llama":
        from gguf import GGUFReader

        assert write_gguf(merged.path, gguf, "f32") == gguf and gguf.stat().st_size > 0
        field = GGUFReader(gguf).fields["tokenizer.ggml.pre"]
        assert bytes(field.parts[field.data[0]]).decode() == "llama-bpe"  # Llama 3's split
    else:
        with pytest.raises(ExportError, match=re.escape(f"not {fam.arch!r}")):
            write_gguf(merged.path, gguf, "f32")


def test_an_untrained_end_of_turn_is_refused_before_training(tmp_path):
    """Llama 3 base never trained `<|eot_id|>` (its row is zero): the adapter could not stop."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunegate.models import BaseModel, sha256_dir
    from tunegate.training.train import TrainError, train_adapter

    fam = next(f for f in FAMILIES if f.name == "llama3-base")
    model_dir = tmp_path / "llama3-base-untrained"
    shutil.copytree(build_model(fam), model_dir)
    cfg = config_for(fam, tmp_path)
    eot = load_tokenizer(model_dir, cfg).convert_tokens_to_ids("<|eot_id|>")
    weights = load_file(model_dir / "model.safetensors")
    weights["model.embed_tokens.weight"][eot] = 0.0
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    base = BaseModel(str(model_dir), model_dir, sha256_dir(model_dir))
    snapshot = tmp_path / "snap.jsonl"
    snapshot.write_text(json.dumps({"messages": CHATS[0]}) + "\n")
    with pytest.raises(TrainError, match=r"'<\|eot_id\|>' \(id 128009, model.embed_tokens.weight\)"
                       r" is untrained in the base model") as caught:  # fmt: skip
        train_adapter(cfg, base, snapshot, tmp_path / "adapter")
    assert "model.add_missing_tokens: true" in str(caught.value)


EVAL_FAMILIES = [BY_NAME[n] for n in ("llama3-base", "gemma3-base", "mistral-instruct")]


@pytest.mark.parametrize("family", EVAL_FAMILIES, ids=[f.name for f in EVAL_FAMILIES],
                         indirect=True)  # fmt: skip
def test_the_heldout_eval_feeds_one_bos_and_stops_at_the_end_of_turn(family, tmp_path):
    from lm_eval.models.huggingface import HFLM
    from test_evaluate import write_heldout

    from tunegate.evaluation.evaluate import heldout_tasks, load_model, run_tasks

    fam, model_dir, _, _ = family
    write_heldout(tmp_path / "heldout.jsonl")
    cfg = config_for(fam, tmp_path, eval={"heldout_path": "heldout.jsonl", "max_items": 2,
                                          "max_new_tokens": 2, "batch_size": 2})  # fmt: skip
    generate, _ = heldout_tasks(cfg)
    model, tokenizer = load_model(model_dir, None, generate.dtype, cfg)
    end = end_of_turn(tokenizer)
    results, _ = run_tasks(model, tokenizer, [generate], stop=end.text)
    sample = results["samples"][generate.name][0]
    prompt, kwargs = sample["arguments"][0]
    assert fam.end in kwargs["until"]
    ids, _ = HFLM(pretrained=model, tokenizer=tokenizer, batch_size=1).tok_batch_encode([prompt])
    bos = tokenizer.bos_token_id
    assert ids[0].tolist().count(bos) == 1 and ids[0][0] == bos
    assert ids[0].tolist() == render_ids(tokenizer, [
        {"role": "system", "content": SYSTEM}, {"role": "user", "content": sample["doc"]["ticket"]}
    ], add_generation_prompt=True)  # fmt: skip


def test_inspect_keeps_the_spaces_of_every_tokenizer(family):
    """SentencePiece tokens decoded one by one lose their leading spaces; inspect must not."""
    from tunegate.curation.checks.template import inspect_row

    fam, _, _, tokenizer = family
    shown = inspect_row(tokenizer, CHATS[0], end=end_of_turn(tokenizer))
    plain = shown.text.plain
    assert CHATS[0][1]["content"] in plain and CHATS[0][2]["content"] in plain
    green = "".join(plain[s.start : s.end] for s in shown.text.spans if "green" in str(s.style))
    answer = ANSWER_PREFIX.get(fam.template, "") + CHATS[0][2]["content"] + fam.end
    assert green.strip() == answer, green


def test_the_label_only_lm_head_gives_the_models_own_loss_and_gradients(family):
    """Training scores only labelled positions through TRL's fused head: same loss and
    gradients as the model's own forward (Gemma's final soft-capping, tied embeddings)."""
    import torch
    from transformers import AutoModelForCausalLM
    from trl.trainer.utils import add_fused_lm_head

    from tunegate.training.train import score_label_positions_only

    _, model_dir, _, tokenizer = family
    chat = tokenize_chat(tokenizer, CHATS[0])
    ids = torch.tensor([chat.input_ids])
    labels = torch.tensor([[t if m else -100 for t, m in zip(chat.input_ids, chat.assistant_mask,
                                                             strict=True)]])  # fmt: skip

    def loss_and_grad(fused: bool) -> tuple[torch.Tensor, torch.Tensor]:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
        if fused:
            add_fused_lm_head(model)
            with score_label_positions_only():
                loss = model(input_ids=ids, labels=labels, fused_lm_head=True, use_cache=False).loss
        else:
            loss = model(input_ids=ids, labels=labels, use_cache=False).loss
        loss.backward()
        return loss.detach(), model.get_output_embeddings().weight.grad

    torch.testing.assert_close(loss_and_grad(True), loss_and_grad(False), atol=1e-5, rtol=1e-4)


def test_a_template_whose_markers_the_tokenizer_lacks_is_refused_by_name(tmp_path):
    """ChatML on a Llama 3 base: `<|im_end|>` is plain text there, the model could not stop."""
    from tunegate.chat import ChatFormatError

    model_dir = build_model(BY_NAME["llama3-base"])
    cfg = make_config(tmp_path, [{"path": "x"}], model={"chat_template": "chatml"})
    with pytest.raises(ChatFormatError, match=re.escape("lacks the template's <|im_start|>, "
                                                        "<|im_end|>: set model.add_missing_tokens: "
                                                        "true")):  # fmt: skip
        end_of_turn(load_tokenizer(model_dir, cfg))


def test_gemma2_without_the_fold_is_one_run_level_error_naming_the_first_row(tmp_path):
    """Gemma 2's template refuses a system turn: one error with the fix, not 400 rejections."""
    from tunegate.curation.run import CurationError, curate
    from tunegate.lineage import Lineage

    fam = BY_NAME["gemma2-instruct"]
    cfg = make_config(tmp_path, [{"path": str(REPO / "datasets" / "raw")}],
                      contamination={"enabled": False}, model={"system_role": "keep"})  # fmt: skip
    tokenizer = load_tokenizer(build_model(fam), cfg)
    lineage = Lineage(tmp_path / "l.duckdb")
    run = lineage.start_run("curate", cfg.config_hash(), "{}")
    with pytest.raises(CurationError) as caught:
        curate(cfg, lineage, run, tokenizer=tokenizer)
    message = str(caught.value)
    assert "fails on row" in message and "tickets_human.jsonl:1:" in message
    assert "System role not supported" in message and "fold_into_first_user" in message


@pytest.mark.parametrize(("name", "system_role", "expected"), [
    ("qwen3-instruct", "keep", "template_parity"),  # earlier answers lose their think block
    ("mistral-instruct", "keep", "template_parity"),  # system prompt moves to the last turn
    ("mistral-instruct", "fold_into_first_user", None),
])  # fmt: skip
def test_multi_turn_traps(name, system_role, expected, tmp_path):
    from tunegate.data.records import Record

    cfg = make_config(tmp_path, [{"path": "x"}], model={"system_role": system_role})
    tokenizer = load_tokenizer(build_model(BY_NAME[name]), cfg)
    row = (
        ("system", "Be brief."),
        ("user", "Where is my order?"),
        ("assistant", "It ships tomorrow."),
        ("user", "And then?"),
        ("assistant", "Two days."),
    )
    record = Record(row, "human", "t.jsonl", 1)
    reasons = [c.reason for c in template_checks(cfg, tokenizer) if c(record) is not None]
    assert reasons[:1] == ([expected] if expected else [])


# -- markers the base lacks or never trained: added, their rows trained (model.add_missing_tokens)

# Untied LM head (Llama 3) and tied (Gemma 3): ChatML's markers are new to both tokenizers.
ADDING = [BY_NAME["llama3-base"], BY_NAME["gemma3-base"]]
NEW_MARKERS = ["<|im_start|>", "<|im_end|>"]


def adding_config(family: Family, tmp_path: Path, **overrides: object):
    model = {"chat_template": "chatml", "add_missing_tokens": True}
    return make_config(tmp_path, [{"path": str(REPO / "datasets" / "raw")}], model=model,
                       contamination={"enabled": False}, **overrides)  # fmt: skip


@pytest.mark.parametrize("fam", ADDING, ids=[f.name for f in ADDING])
def test_added_markers_pass_the_gate_and_end_the_labels(fam, tmp_path):
    from transformers import AutoTokenizer

    model_dir = build_model(fam)
    cfg = adding_config(fam, tmp_path)
    tokenizer = load_tokenizer(model_dir, cfg)
    n_base = len(AutoTokenizer.from_pretrained(model_dir))
    assert tokenizer.convert_tokens_to_ids(NEW_MARKERS) == [n_base, n_base + 1]
    end = end_of_turn(tokenizer)
    assert end.text == "<|im_end|>" and end.ids == (n_base + 1,)
    for messages in CHATS:
        chat = tokenize_chat(tokenizer, messages, end)
        spans = labelled_spans(chat.input_ids, chat.assistant_mask)
        answers = [m["content"] for m in messages if m["role"] == "assistant"]
        assert [s[-1] for s in spans] == [n_base + 1] * len(answers)
        assert [tokenizer.decode(s[:-1]) for s in spans] == answers
    checks = template_checks(cfg, tokenizer)
    result = curate_records(cfg, checks=checks)
    planted = {key for key, (kind, _) in planted_defects().items() if kind == "control_token"}
    wrong = [(Path(v.source).name, v.source_row, v.reason, v.detail) for v in result.verdicts
             if v.reason in TEMPLATE_REASONS
             and (Path(v.source).name, v.source_row) not in planted]  # fmt: skip
    assert not wrong
    assert len(result.accepted) >= 400


@pytest.mark.slow
@pytest.mark.parametrize("fam", ADDING, ids=[f.name for f in ADDING])
def test_added_token_rows_train_reload_and_merge(fam, tmp_path):
    """2 QLoRA steps train the new rows (only them); the adapter reloads on a base with rows
    for the new tokens, whatever they hold, and the merged export matches it."""
    import torch
    from peft import PeftModel
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from tunegate.data.records import Record
    from tunegate.data.snapshot import write_snapshot
    from tunegate.models import BaseModel, sha256_dir
    from tunegate.release.export import load_trained_base, merge_adapter
    from tunegate.training.token_rows import fit_embeddings, set_rows_to_mean
    from tunegate.training.train import train_adapter

    model_dir = build_model(fam)
    cfg = adding_config(
        fam, tmp_path,
        train={"max_steps": 2, "batch_size": 2, "gradient_accumulation_steps": 1,
               "validation_fraction": 0.0, "checkpoint_steps": 0, "compute_dtype": "float32",
               "learning_rate": 0.01, "logging_steps": 1},
        lora={"r": 4, "alpha": 8},
    )  # fmt: skip
    records = [Record(tuple((m["role"], m["content"]) for m in c), "human", "x", k)
               for k, c in enumerate(CHATS * 2)]  # fmt: skip
    snap = write_snapshot(records, tmp_path / "snapshots")
    base = BaseModel(str(model_dir), model_dir, sha256_dir(model_dir))
    result = train_adapter(cfg, base, snap.path, tmp_path / "adapter")

    tokenizer = AutoTokenizer.from_pretrained(result.adapter_dir)  # saved with the new markers
    new_ids = tokenizer.convert_tokens_to_ids(NEW_MARKERS)
    n_base = len(AutoTokenizer.from_pretrained(model_dir))
    tokens = json.loads((result.adapter_dir / "manifest.json").read_text())["tokens"]
    assert tokens == {"added": NEW_MARKERS, "untrained_in_base": [],
                      "trainable_token_indices": new_ids, "base_vocab_size": n_base,
                      "vocab_size": n_base + 2}  # fmt: skip

    def with_adapter(init_new_rows) -> PeftModel:
        model = load_trained_base(model_dir, "nf4")
        model.resize_token_embeddings(len(tokenizer), mean_resizing=False)
        init_new_rows(model)
        return PeftModel.from_pretrained(model, result.adapter_dir).eval()

    ids = torch.tensor([render_ids(tokenizer, CHATS[0])])
    assert set(new_ids) <= set(ids[0].tolist())
    reloaded = with_adapter(lambda m: set_rows_to_mean(m, new_ids))
    other_init = with_adapter(lambda m: None)  # random new rows: the adapter replaces them
    with torch.no_grad():
        logits = reloaded(input_ids=ids).logits
        torch.testing.assert_close(other_init(input_ids=ids).logits, logits)

    # the new rows moved from their mean start; every other row is the base's
    start = load_trained_base(model_dir, "nf4")
    fit_embeddings(start, len(tokenizer))
    merged = merge_adapter(result.adapter_dir, model_dir, tmp_path / "merged")
    standalone = AutoModelForCausalLM.from_pretrained(merged.path).eval()
    assert standalone.config.vocab_size == n_base + 2
    for get in ("get_input_embeddings", "get_output_embeddings"):
        trained, before = (getattr(m, get)().weight.detach() for m in (standalone, start))
        assert not torch.allclose(trained[new_ids], before[new_ids]), get
        torch.testing.assert_close(trained[:n_base], before[:n_base], atol=0, rtol=0)
    assert AutoTokenizer.from_pretrained(merged.path).convert_tokens_to_ids(NEW_MARKERS) == new_ids
    with torch.no_grad():
        torch.testing.assert_close(standalone(input_ids=ids).logits, logits, atol=1e-4, rtol=1e-4)
    if fam.arch == "llama":  # llama.cpp gets the new markers as control tokens
        from gguf import GGUFReader

        from tunegate.release.export import write_gguf

        field = GGUFReader(write_gguf(merged.path, tmp_path / "m.gguf", "f32")).fields[
            "tokenizer.ggml.tokens"
        ]
        assert [bytes(field.parts[field.data[i]]).decode() for i in new_ids] == NEW_MARKERS


def test_an_untrained_end_of_turn_is_trained_when_asked(tmp_path):
    """Llama 3 base's zero `<|eot_id|>` row: with model.add_missing_tokens, trained, not refused."""
    import shutil

    from safetensors.torch import load_file, save_file

    from tunegate.training.token_rows import plan_token_rows

    fam = BY_NAME["llama3-base"]
    model_dir = tmp_path / "llama3-base-untrained"
    shutil.copytree(build_model(fam), model_dir)
    cfg = make_config(tmp_path, [{"path": "x"}],
                      model={"chat_template": "llama3", "add_missing_tokens": True})  # fmt: skip
    tokenizer = load_tokenizer(model_dir, cfg)
    eot = tokenizer.convert_tokens_to_ids("<|eot_id|>")
    weights = load_file(model_dir / "model.safetensors")
    weights["lm_head.weight"][eot] = 0.0
    save_file(weights, model_dir / "model.safetensors", metadata={"format": "pt"})
    rows = plan_token_rows(model_dir, tokenizer, end_of_turn(tokenizer), train_rows=True)
    assert rows.added == () and rows.untrained == ("<|eot_id|>",) and rows.indices == (eot,)
    assert rows.vocab_size == rows.base_vocab_size == len(tokenizer)


@pytest.mark.slow
def test_added_token_rows_resume_from_a_checkpoint(tmp_path):
    """A run stopped after its first checkpoint resumes to the adapter an uninterrupted run
    makes (fp32: the same weights), trained token rows included."""
    from tunegate.data.records import Record
    from tunegate.data.snapshot import write_snapshot
    from tunegate.models import BaseModel, sha256_dir
    from tunegate.training.train import train_adapter

    model_dir = build_model(BY_NAME["llama3-base"])
    base = BaseModel(str(model_dir), model_dir, sha256_dir(model_dir))
    records = [Record(tuple((m["role"], m["content"]) for m in c), "human", "x", k)
               for k, c in enumerate(CHATS * 2)]  # fmt: skip
    snap = write_snapshot(records, tmp_path / "snapshots")

    def config(root: Path):
        return adding_config(
            BY_NAME["llama3-base"], root,
            train={"max_steps": 2, "batch_size": 2, "gradient_accumulation_steps": 1,
                   "validation_fraction": 0.0, "checkpoint_steps": 1,
                   "compute_dtype": "float32", "learning_rate": 0.01, "logging_steps": 1},
            lora={"r": 4, "alpha": 8},
        )  # fmt: skip

    def stop_at_step_2(entry: dict[str, float]) -> None:
        if entry.get("step") == 2 and "loss" in entry:  # logged before step 2's checkpoint
            raise KeyboardInterrupt

    reference = train_adapter(config(tmp_path / "ref"), base, snap.path, tmp_path / "reference")
    with pytest.raises(KeyboardInterrupt):
        train_adapter(config(tmp_path), base, snap.path, tmp_path / "a", on_log=stop_at_step_2)
    resumed = train_adapter(config(tmp_path), base, snap.path, tmp_path / "a")
    manifest = json.loads((resumed.adapter_dir / "manifest.json").read_text())
    assert manifest["resumed_from_step"] == 1 and manifest["tokens"]["added"] == NEW_MARKERS
    assert resumed.adapter_id == reference.adapter_id
