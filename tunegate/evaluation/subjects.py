"""One model in memory that is, in turn, the base model and the base with the adapter merged.

The paired sequential suite asks both subjects for the same chunk of items, look by look. Two
models would double the eval's memory; reloading and merging at every look would repeat the
load. Here the adapter is merged once, and only the parameters the merge changes (the weights under
the LoRA layers, the embedding rows of trained tokens) are kept in both versions; `use` points those
parameters at one version or the other. Each subject's weights are bit for bit the ones
`load_model` gives it: the same fp32 merge, the same single cast to the eval dtype.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Literal

from tunegate.config import PipelineConfig
from tunegate.evaluation.evaluate import EvalError, load_base_fp32
from tunegate.precision import pick_device

if TYPE_CHECKING:
    import torch
    from transformers import PreTrainedModel, PreTrainedTokenizerBase

Subject = Literal["base", "adapter"]


class Subjects:
    """The model, its tokenizer, and per subject the tensors of the parameters that differ."""

    def __init__(
        self,
        model: PreTrainedModel,
        tokenizer: PreTrainedTokenizerBase,
        versions: dict[Subject, dict[str, torch.Tensor]],
    ) -> None:
        self.model, self.tokenizer, self._versions = model, tokenizer, versions
        self._params = dict(model.named_parameters())

    def use(self, subject: Subject) -> PreTrainedModel:
        """The model with `subject`'s weights (no copy: the parameters are re-pointed)."""
        for name, tensor in self._versions[subject].items():
            self._params[name].data = tensor
        return self.model


def load_subjects(
    model_dir: Path, adapter_dir: Path, dtype: str, config: PipelineConfig | None = None
) -> Subjects:
    """Base model and adapter in one model object (see the module docstring), on the best
    device in `dtype`. Memory: the model plus a second copy of the parameters under adapter layers.
    """
    import torch
    from peft import PeftModel
    from peft.tuners.tuners_utils import BaseTunerLayer

    model, tokenizer = load_base_fp32(model_dir, config)
    wrapped = PeftModel.from_pretrained(model, adapter_dir)
    # The base weights under each adapter layer, by identity: merging adds to them in place.
    originals = {
        id(p): p.detach().clone()
        for module in wrapped.modules()
        if isinstance(module, BaseTunerLayer)
        for p in module.get_base_layer().parameters(recurse=False)
    }
    merged = wrapped.merge_and_unload()
    names = {id(p): name for name, p in merged.named_parameters()}
    if not set(originals) <= set(names):
        raise EvalError(f"{adapter_dir}: merging replaced parameters it should have changed in "
                        "place; evaluate base and adapter one at a time "
                        "(eval.general.sequential.enabled: false)")  # fmt: skip
    target = {"device": pick_device(), "dtype": getattr(torch, dtype)}
    merged.to(**target)
    params = dict(merged.named_parameters())
    base = {names[key]: original.to(**target) for key, original in originals.items()}
    adapter = {name: params[name].data for name in base}
    return Subjects(merged, tokenizer, {"base": base, "adapter": adapter})
