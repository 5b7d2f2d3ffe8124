"""One way to feed a batch of conversations through a model exchange by exchange, the TTT state carried.

Training, the validation loss, eval and chat all go through `ExchangeStream`: it owns the batch's `TTTCache`,
starts the rows whose exchange is a conversation's first (`turn_number` 0) from the learned initial state, and
checks after every forward that the cache advanced by exactly the positions fed (a model that ignored its cache
would otherwise start every exchange from the initial state without a word).
"""

from __future__ import annotations

from typing import Any

import torch

#: when the TTT state goes back to the learned init inside a conversation (it always does at its start)
TTT_RESETS = ("never", "every-turn")
#: the keys of a collated exchange step (`omnittt.data.dataset.ExchangeCollator`) that the model takes
MODEL_INPUTS = ("input_ids", "attention_mask", "labels", "input_features", "feature_lengths", "num_positions")


def model_inputs(step: dict[str, Any], device: torch.device) -> dict[str, Any]:
    """The model's inputs of one collated exchange step, on `device` (what `ExchangeStream.exchange` takes)."""
    return {key: step[key].to(device) for key in MODEL_INPUTS if step.get(key) is not None}


class ExchangeStream:
    """The cache of one batch of conversations and the forwards that advance it.

    `ttt_reset="every-turn"` puts every row's TTT state back to the learned initial state before each of its
    exchanges (attention context is kept): eval's control for what the carried state contributes."""

    def __init__(self, model: torch.nn.Module, ttt_reset: str = "never") -> None:
        if ttt_reset not in TTT_RESETS:
            raise ValueError(f"ttt_reset must be one of {TTT_RESETS}, got {ttt_reset!r}")
        self.model = model
        self.cache = model.new_cache()
        self.ttt_reset = ttt_reset

    def start_exchange(self, turn_number: torch.Tensor) -> None:
        """Rows at turn 0 begin a new conversation; with `every-turn` the other rows' TTT state is reset too."""
        new = (turn_number == 0).nonzero().flatten()
        if new.numel():
            self.cache.reset(new.tolist())
        if self.ttt_reset == "every-turn":
            self.cache.reset_ttt_state(turn_number > 0)

    def embed(self, inputs: dict[str, Any]) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """(embeddings with the speech spliced in, their attention mask, labels aligned to them)."""
        return self.model.embed_inputs(
            inputs["input_ids"], inputs.get("input_features"), inputs.get("feature_lengths"),
            inputs.get("attention_mask"), inputs.get("labels"), inputs.get("num_positions"))

    def feed(self, inputs_embeds: torch.Tensor, attention_mask: torch.Tensor, **kwargs: Any) -> Any:
        """One forward of spliced embeddings through the model and the cache, checked to have advanced it."""
        before = self.cache.progress()
        out = self.model(inputs_embeds=inputs_embeds, attention_mask=attention_mask, cache=self.cache,
                         use_cache=True, **kwargs)
        self.cache.check_advanced(before, inputs_embeds.shape[1])
        return out

    def feed_text(self, input_ids: torch.Tensor, attention_mask: torch.Tensor | None = None, **kwargs: Any) -> Any:
        """Token ids without speech through `feed` (chat's closing tokens and alignment pads)."""
        embeds, mask, _ = self.embed({"input_ids": input_ids, "attention_mask": attention_mask})
        return self.feed(embeds, mask, **kwargs)

    def generate(self, input_ids: torch.Tensor, **kwargs: Any) -> Any:
        """`model.generate()` continuing the cache (prompt and reply), checked to have advanced it."""
        before = self.cache.progress()
        out = self.model.generate(input_ids, cache=self.cache, **kwargs)
        self.cache.check_advanced(before)
        return out

    def exchange(self, inputs: dict[str, Any], turn_number: torch.Tensor, **kwargs: Any) -> Any:
        """Start the exchange, splice its speech and feed it (labels included, so the output has the loss)."""
        self.start_exchange(turn_number)
        embeds, mask, labels = self.embed(inputs)
        return self.feed(embeds, mask, labels=labels, **kwargs)

    def detach(self) -> None:
        """Cut the graph to earlier exchanges (between truncated-BPTT windows); the state itself carries on."""
        self.cache.detach()
