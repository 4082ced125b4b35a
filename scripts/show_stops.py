"""Where a model's held-out answers end: on its end-of-turn token, or run on to the budget.

    python scripts/show_stops.py MODEL_DIR [-n 20] [--tokenizer DIR] [--max-new-tokens 128]

MODEL_DIR: a merged model from `tunegate export`, as a server would load it. Each of the
first N held-out tickets is rendered with the tokenizer's chat template (the held-out task's
system message, the ticket as the user turn, the assistant header) and answered greedily
under the model's own `generation_config.json` (its `eos_token_id`: tunegate writes the end of
turn first), with a budget far above an answer's length. Printed per item: tokens generated,
the token it stopped on, the answer with its special tokens; then how many answers the model
ended itself. `--tokenizer` takes the template from another directory, e.g. to show a base
model without one under the adapter's template.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO))

from tunegate.evaluation.evaluate import TASK_YAML  # noqa: E402


class TaskLoader(yaml.SafeLoader):
    """lm-eval's task YAML: its `!function` tags read as the plain strings they hold."""


TaskLoader.add_multi_constructor("!", lambda loader, _tag, node: loader.construct_scalar(node))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("model", type=Path)
    parser.add_argument("--tokenizer", type=Path, default=None, help="default: MODEL_DIR")
    parser.add_argument("--heldout", type=Path, default=REPO / "evals/data/heldout.jsonl")
    parser.add_argument("-n", type=int, default=20, help="first N held-out tickets")
    parser.add_argument("--max-new-tokens", type=int, default=128)
    args = parser.parse_args()

    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(args.tokenizer or args.model)
    model = AutoModelForCausalLM.from_pretrained(args.model, torch_dtype=torch.float32).eval()
    eos = model.generation_config.eos_token_id
    eos_ids = set(eos if isinstance(eos, list) else [eos])
    print(f"# {args.model}: generation_config eos_token_id {sorted(eos_ids)} = "
          f"{tokenizer.convert_ids_to_tokens(sorted(eos_ids))}")  # fmt: skip
    system = yaml.load(TASK_YAML.read_text(), TaskLoader)["description"]
    tickets = [json.loads(line) for line in args.heldout.read_text().splitlines()[: args.n]]

    lengths, ended = [], 0
    for item in tickets:
        chat = [{"role": "system", "content": system}, {"role": "user", "content": item["ticket"]}]
        prompt = tokenizer.apply_chat_template(
            chat, add_generation_prompt=True, return_tensors="pt", return_dict=True
        )
        with torch.no_grad():
            out = model.generate(**prompt, max_new_tokens=args.max_new_tokens, do_sample=False)
        new = out[0, prompt["input_ids"].shape[1] :].tolist()
        stopped = bool(new) and new[-1] in eos_ids
        ended += stopped
        lengths.append(len(new))
        last = tokenizer.convert_ids_to_tokens(new[-1]) if new else "-"
        print(f"{item['id']}: {len(new):>3} tokens, "
              f"{'stopped on ' + last if stopped else 'ran to the budget'}: "
              f"{tokenizer.decode(new)!r}")  # fmt: skip
    print(
        f"ended with an eos_token_id: {ended} of {len(tickets)}; tokens generated: median "
        f"{statistics.median(lengths):g}, max {max(lengths)} (budget {args.max_new_tokens})"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
