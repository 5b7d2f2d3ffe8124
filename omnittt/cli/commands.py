"""The one table of `omnittt` commands: name, the module under omnittt/cli that defines it, and the one line of
help `omnittt --help` shows. `omnittt.cli.app` registers from it and the tests read it."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Command:
    name: str  # what users type: `omnittt NAME`
    module: str  # omnittt.cli.<module> has `register(app)`, which adds exactly one command
    short_help: str  # the line in `omnittt --help`


COMMANDS: tuple[Command, ...] = (
    Command("download", "download",
            "Fetch a corpus (deepdialogue, librispeech, librilight) or make the synthetic one."),
    Command("preprocess", "preprocess", "Turn a raw corpus into a processed dataset of exchange samples."),
    Command("validate", "validate", "Check a processed dataset: structure, audio, alignment, labels, tokens."),
    Command("curriculum", "curriculum", "Show the 8k/16k/32k/64k stage table of a processed dataset."),
    Command("train", "train", "Train a TTT speech model conversation by conversation."),
    Command("resume", "resume", "Continue a run exactly from its latest checkpoint."),
    Command("monitor", "monitor", "Live TUI of TTT-state norms, FP32 status and training health."),
    Command("chat", "chat", "Talk to a trained model with persistent TTT state across turns."),
    Command("eval", "evaluate", "Loss vs position, TTT vs attention, carried vs reset state, recall."),
    Command("export", "export", "Export a run's checkpoint as a Hugging Face directory."),
    Command("quickstart", "quickstart", "The whole pipeline offline on a tiny model, in minutes."),
)
