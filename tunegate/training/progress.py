"""What a training run shows and keeps while it runs: a console bar and the log history.

Both are `TrainerCallback`s and count tokens from the trainer state
(`num_input_tokens_seen`), which a checkpoint carries: after a resume the totals go on
from where the killed run stopped, and the rates cover only this process's own work.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any

from tqdm import tqdm
from transformers import TrainerCallback

LogSink = Callable[[dict[str, float]], None]


class LogRecorder(TrainerCallback):
    """Keeps every train and eval record with its step and tokens/s, and forwards each one.

    Train records carry `loss`, `learning_rate`, `tokens_per_s` (since the previous record);
    eval records carry `eval_loss`. The final step is always logged, whatever
    `logging_steps` is, so the curve and the last loss describe the whole run.
    """

    def __init__(self, sink: LogSink | None = None) -> None:
        self.sink = sink
        self.history: list[dict[str, float]] = []
        self.session_tokens = 0.0  # tokens trained by this process's session (not before resume)
        self._start_tokens = 0.0
        self._last = (0.0, 0.0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self._start_tokens = float(state.num_input_tokens_seen)
        self._last = (time.perf_counter(), self._start_tokens)

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        self.session_tokens = float(state.num_input_tokens_seen) - self._start_tokens
        if state.global_step >= state.max_steps:
            control.should_log = True

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        if not state.is_world_process_zero or not logs:
            return
        step = float(state.global_step)
        if "loss" in logs:
            now, tokens = time.perf_counter(), float(state.num_input_tokens_seen)
            entry = {k: float(v) for k, v in logs.items() if isinstance(v, int | float)}
            rate = (tokens - self._last[1]) / max(now - self._last[0], 1e-9)
            entry.update(step=step, trained_tokens=tokens, tokens_per_s=rate)
            self._last = (now, tokens)
        elif "eval_loss" in logs:
            entry = {"step": step, "eval_loss": float(logs["eval_loss"])}
        else:  # the end-of-run summary: the caller reads it from `train()`
            return
        self.history.append(entry)
        if self.sink is not None:
            self.sink(dict(entry))


class ProgressBar(TrainerCallback):
    """A console bar with steps, ETA, trained tokens/s and the last losses (main process only).

    It replaces transformers' own bar, which counts steps but not tokens: with rows of very
    different lengths a step rate says little about how fast the data goes through.
    """

    def __init__(self) -> None:
        self.bar: tqdm | None = None
        self.postfix: dict[str, str] = {}
        self._start = (0.0, 0.0)

    def on_train_begin(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if state.is_world_process_zero:
            self.bar = tqdm(total=state.max_steps, initial=state.global_step, desc="train",
                            unit="step", dynamic_ncols=True)  # fmt: skip
            self._start = (time.perf_counter(), float(state.num_input_tokens_seen))

    def on_step_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is None:
            return
        elapsed = max(time.perf_counter() - self._start[0], 1e-9)
        rate = (float(state.num_input_tokens_seen) - self._start[1]) / elapsed
        self.postfix["tok/s"] = f"{rate:.0f}"
        self.bar.set_postfix(self.postfix, refresh=False)
        self.bar.update(state.global_step - self.bar.n)

    def on_log(self, args: Any, state: Any, control: Any, logs: Any = None, **kwargs: Any) -> None:
        for key in ("loss", "eval_loss"):
            if logs and key in logs:
                self.postfix[key] = f"{float(logs[key]):.3f}"

    def on_train_end(self, args: Any, state: Any, control: Any, **kwargs: Any) -> None:
        if self.bar is not None:
            self.bar.close()
            self.bar = None
