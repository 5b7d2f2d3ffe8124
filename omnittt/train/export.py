"""`omnittt export`: a run's checkpoint as a Hugging Face `save_pretrained` directory (weights in safetensors,
sharded when large; config.json; tokenizer; feature-extractor config; the training configuration for
provenance) and a model card `README.md`, loadable after `import omnittt` with
`AutoModelForCausalLM.from_pretrained` (omnittt registers its model type with transformers' Auto classes), with
`OmniTTTForCausalLM.from_pretrained`, `omnittt.core.loading.load_model`, chat and eval. Only the model goes out:
optimizer, schedule, RNG and trainer state stay in the run.

The model card says how to load the model, its base model, the curriculum stages and data it was trained on (the
run's `config.yaml`, the `config.<stage>.yaml` of earlier stages, the checkpoint's `trainer_state.json`), its TTT
settings (from the model's own config) and the figures of an `omnittt eval` report (`eval.json` in the run
directory, or `eval_report=`)."""

from __future__ import annotations

import json
import math
import os
import shutil
from pathlib import Path
from typing import Any

import yaml

from omnittt.atomic import atomic_directory
from omnittt.data.curriculum import stage_names
from omnittt.errors import UserError
from omnittt.runs import FEATURE_EXTRACTOR_FILE, open_run
from omnittt.train.run_dir import RunDir

# what a checkpoint holds beside the weights that an exported model also needs
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "chat_template.jinja")
EXPORT_REQUIRES = ("tokenizer.json", "tokenizer_config.json", FEATURE_EXTRACTOR_FILE)  # checked before writing
TRAINING_CONFIG_FILE = "training_config.yaml"
MODEL_CARD_FILE = "README.md"
EVAL_FILE = "eval.json"  # `omnittt eval --output` inside the run directory: its figures go into the model card


def export_checkpoint(run: str | os.PathLike, to: str | os.PathLike, checkpoint: str = "latest",
                      max_shard_size: str = "5GB", overwrite: bool = False,
                      eval_report: str | os.PathLike | None = None) -> dict[str, Any]:
    """Write the export to `to` atomically; returns what was exported (source checkpoint, step, files, the eval
    report whose figures the model card shows)."""
    # the checkpoint is opened (`omnittt.runs.open_run`) and checked before anything is read into memory or removed
    # (--overwrite): trainer state, weights complete and of the model config.json describes, tokenizer and
    # feature-extractor config beside them. A bare checkpoint folder outside its run is still a complete model.
    opened = open_run(run, checkpoint, accept="checkpoint", require=EXPORT_REQUIRES, load=False)
    source, run_dir, state = opened.path, opened.run, opened.trainer_state
    target = Path(to)
    eval_path = Path(eval_report) if eval_report is not None else None
    if eval_path is None and run_dir is not None and (run_dir.path / EVAL_FILE).is_file():
        eval_path = run_dir.path / EVAL_FILE
    report = _read_eval(eval_path) if eval_path is not None else None
    if target.exists():
        if not overwrite:
            raise UserError(f"{target} already exists", fix="choose another --to, or pass --overwrite")
        shutil.rmtree(target)
    model = opened.load().model
    card = model_card(model, name=target.name, checkpoint=source, trainer_state=state,
                      stage_configs=_stage_configs(run_dir, state), eval_report=report, eval_path=eval_path)
    with atomic_directory(target) as tmp:
        model.save_pretrained(tmp, safe_serialization=True, max_shard_size=max_shard_size)
        for name in (*TOKENIZER_FILES, FEATURE_EXTRACTOR_FILE):
            if (source / name).is_file():
                shutil.copy2(source / name, tmp / name)
        if not (tmp / "tokenizer_config.json").is_file() or not (tmp / FEATURE_EXTRACTOR_FILE).is_file():
            raise UserError(f"{source}: no tokenizer or feature-extractor config beside the weights",
                            fix="export a checkpoint written by omnittt train")
        if run_dir is not None:
            shutil.copy2(run_dir.config_path, tmp / TRAINING_CONFIG_FILE)
        (tmp / MODEL_CARD_FILE).write_text(card)
    return {"checkpoint": str(source), "step": state.get("step"), "to": str(target),
            "eval": str(eval_path) if eval_path is not None else None,
            "files": sorted(p.name for p in target.iterdir())}


def _read_eval(path: Path) -> dict[str, Any]:
    if not path.is_file():
        raise UserError(f"{path}: no such eval report", fix="pass the file `omnittt eval --output FILE` wrote")
    try:
        report = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise UserError(f"{path}: not a JSON eval report ({error})",
                        fix="pass the file `omnittt eval --output FILE` wrote") from error
    if not isinstance(report, dict) or not isinstance(report.get("runs"), list):
        raise UserError(f"{path}: not an omnittt eval report (no runs)",
                        fix="pass the file `omnittt eval --output FILE` wrote")
    return report


def _stage_configs(run_dir: RunDir | None, trainer_state: dict[str, Any]) -> list[dict[str, Any]]:
    """The run's configurations, one per curriculum stage (earlier stages' `config.<stage>.yaml`, then
    `config.yaml`), up to the stage the exported checkpoint belongs to."""
    if run_dir is None:
        return []

    order = stage_names()
    earlier = sorted(run_dir.path.glob("config.*.yaml"),
                     key=lambda p: order.index(p.name[7:-5]) if p.name[7:-5] in order else len(order))
    configs = [yaml.safe_load(p.read_text()) or {} for p in earlier] + [run_dir.read_config()]
    names = [(c.get("stage") or {}).get("name") for c in configs]
    stage = trainer_state.get("stage")
    if stage in names:  # a checkpoint of an earlier stage: the later ones did not train it
        configs = configs[: len(names) - names[::-1].index(stage)]
    return configs


def model_card(model: Any, name: str, checkpoint: Path, trainer_state: dict[str, Any],
               stage_configs: list[dict[str, Any]], eval_report: dict[str, Any] | None = None,
               eval_path: Path | None = None) -> str:
    """The export's README.md (Markdown with Hugging Face front matter)."""
    config = model.config
    text, speech = config.text_config, config.speech_config
    ttt = model.language_model.ttt_summary()
    step = trainer_state.get("step")
    parameters = sum(p.numel() for p in model.parameters())
    lines = [
        "---", "library_name: transformers", "tags:", "- omnittt", "- speech", "- test-time-training", "---", "",
        f"# {name}", "",
        f"An OmniTTT speech language model (Whisper encoder -> k={config.speech_ds_rate} concat projector -> Llama "
        f"with Test-Time-Training layers), exported by `omnittt export` from `{checkpoint}` (step {step}).", "",
        "## How to load it", "",
        "It needs the `omnittt` package (it holds the TTT layers; there is no remote code to trust). "
        "`import omnittt` registers the `omnittt` model type with transformers' Auto classes:", "",
        "```python",
        "import omnittt  # noqa: F401  (registers the model type)",
        "from transformers import AutoFeatureExtractor, AutoModelForCausalLM, AutoTokenizer",
        "",
        f'path = "{name}"  # this folder',
        "model = AutoModelForCausalLM.from_pretrained(path)",
        "tokenizer = AutoTokenizer.from_pretrained(path)  # Llama-3 chat template, `<|eot_id|>` ends a turn",
        f"feature_extractor = AutoFeatureExtractor.from_pretrained(path)  # {speech.num_mel_bins}-bin log-mel, "
        "16 kHz",
        "```", "",
        "A spoken conversation with the TTT state carried from turn to turn:", "",
        "```python",
        "from omnittt.chat import ChatSession",
        "",
        "chat = ChatSession(model, tokenizer, feature_extractor)",
        'print(chat.user_turn(audio="question.wav").text)',
        "```", "",
        f"or from the shell: `omnittt chat --model {name}`, `omnittt eval --model {name} --data DIR`.", "",
        "## Model", "",
        "| | |", "|---|---|",
        f"| parameters | {parameters:,} |",
        f"| language model | {text.num_hidden_layers} layers, hidden {text.hidden_size}, "
        f"{text.num_attention_heads} heads ({text.num_key_value_heads} KV), vocabulary {text.vocab_size:,} |",
        f"| speech encoder | Whisper encoder, {speech.encoder_layers} layers, d_model {speech.d_model}, "
        f"{speech.num_mel_bins} mel bins |",
        f"| speech positions | `{config.speech_positions}` (per 30 s segment: `trim` ceil(samples/1600), "
        "`full` 300) |",
        f"| base model | {_base_model(stage_configs)} |", "",
        "## Test-Time Training", "",
        "| setting | value |", "|---|---|",
        f"| TTT layers | {_layers(ttt['ttt_layers'])} of {ttt['num_layers']} |",
        f"| type | `{ttt['ttt_type']}` |",
        f"| mode | `{ttt['ttt_mode']}` |",
        f"| mini-batch size | {ttt['ttt_mini_batch_size']} |",
        f"| base learning rate | {ttt['ttt_base_lr']:g} |",
        f"| attention window | {ttt['attention_window'] or 'none (full attention)'} |",
        f"| layer types | {', '.join(f'`{t}`' for t in (getattr(text, 'layer_types', None) or []))} |", "",
        "The TTT inner state is float32 whatever the model is cast to. Feed a conversation exchange by exchange "
        "with the cache the previous call returned, as training did: the state carries what was said.", "",
    ]
    lines += _training_section(stage_configs, trainer_state)
    lines += _eval_section(eval_report, eval_path, step)
    return "\n".join(lines).rstrip() + "\n"


def _layers(layers: list[int]) -> str:
    return ", ".join(str(i) for i in layers) if layers else "none (attention-only baseline)"


def _base_model(configs: list[dict[str, Any]]) -> str:
    if not configs:
        return "not recorded (exported from a checkpoint outside its run directory)"
    first = configs[0]
    source = str(first.get("model_source") or "")
    settings = first.get("settings") or {}
    if source.startswith("preset:"):
        return f"the `{source[len('preset:'):]}` preset of omnittt, random initialisation"
    if settings.get("resume_from"):
        return f"checkpoint `{source}` of another run"
    return f"local checkpoint `{source}`" if source else "not recorded"


def _training_section(configs: list[dict[str, Any]], state: dict[str, Any]) -> list[str]:
    lines = ["## Training", ""]
    if not configs:
        return [*lines, f"Step {state.get('step')}; the run's configuration was not found beside the checkpoint.", ""]
    last = configs[-1]
    settings = last.get("settings") or {}
    lines += [
        f"Run `{settings.get('run')}`, exported at optimizer step {state.get('step')} "
        f"({'finished' if state.get('finished') else 'not finished'}), {int(state.get('tokens') or 0):,} positions "
        f"trained on, {int(state.get('skipped') or 0)} non-finite windows skipped. Trainable groups "
        f"`{settings.get('train')}`, batch {settings.get('batch_size')} conversations, "
        f"{settings.get('tbptt_turns')} exchanges per truncated-BPTT window, mixed precision "
        f"`{last.get('mixed_precision')}`, {last.get('num_processes', 1)} process(es), seed {settings.get('seed')}. "
        f"The full configuration is `{TRAINING_CONFIG_FILE}`.", "",
        "| stage | positions | data | conversations (train / validation) | optimizer steps | learning rate |",
        "|---|---|---|---|---|---|",
    ]
    start = 0
    for i, config in enumerate(configs):
        stage = config.get("stage") or {}
        dataset = config.get("dataset") or {}
        conversations = config.get("conversations") or {}
        end = state.get("step") if i == len(configs) - 1 else config.get("total_steps")
        positions = (f"{stage['min_positions']:,}-{stage['max_positions']:,}" if "min_positions" in stage
                     else "whole conversations")
        data = f"`{(config.get('settings') or {}).get('data')}`"
        if dataset.get("source"):
            data += f" ({dataset['source']}, tokenizer {dataset.get('tokenizer_name')})"
        lines.append(f"| {stage.get('name')} | {positions} | {data} | {conversations.get('train')} / "
                     f"{conversations.get('validation')} | {start}-{end} | {config.get('learning_rate')} |")
        start = end if isinstance(end, int) else start
    return [*lines, ""]


def _figure(row: dict[str, Any] | None, signed: bool = False) -> str:
    if not row or row.get("loss") is None:
        return "-"
    fmt = "{:+.3f}" if signed else "{:.3f}"
    text = fmt.format(row["loss"])
    if row.get("ci"):
        text += f" [{fmt.format(row['ci'][0])}, {fmt.format(row['ci'][1])}]"
    return text


def _eval_section(report: dict[str, Any] | None, path: Path | None, step: Any) -> list[str]:
    if report is None:
        return ["## Evaluation", "",
                "No `omnittt eval` report was given (`omnittt export --eval FILE`, or `eval.json` in the run "
                "directory).", ""]
    stats = report.get("statistics") or {}
    uniform = report.get("uniform_loss")
    head = (f"From `omnittt eval` (`{path.name if path else 'report'}`): model `{report.get('model')}`"
            + (f" (step {report['step']})" if report.get("step") is not None else "")
            + f", data `{report.get('data')}`, stage {report.get('stage')}, {report.get('conversations')} "
            f"conversations, {report.get('exchanges')} exchanges, {report.get('positions')} positions. "
            "Teacher-forced loss in nats per assistant token"
            + (f", {stats['confidence']:.0%} interval ({stats.get('interval')})" if stats.get("confidence") else "")
            + (f"; uniform guess ln {report.get('vocab_size')} = {uniform:.3f}" if isinstance(uniform, float)
               and math.isfinite(uniform) else "") + ".")
    lines = ["## Evaluation", "", head, ""]
    if report.get("step") is not None and step is not None and report["step"] != step:
        lines += [f"The report is for step {report['step']}; this export is step {step}.", ""]
    runs, comparisons = report.get("runs") or [], report.get("comparisons") or []
    names = [f"`{r.get('name')}`" for r in runs] + [f"Δ `{c.get('name')}`" for c in comparisons]
    lines += [f"| position | tokens | {' | '.join(names)} |", "|---" * (len(names) + 2) + "|"]
    for i, label in enumerate(report.get("buckets") or []):
        cells = [_figure(r["buckets"][i]) for r in runs] + [_figure(c["buckets"][i], True) for c in comparisons]
        tokens = runs[0]["buckets"][i].get("tokens", "") if runs else ""
        lines.append(f"| {label} | {tokens} | {' | '.join(cells)} |")
    if runs:
        cells = [_figure(r.get("overall")) for r in runs] + [_figure(c.get("overall"), True) for c in comparisons]
        lines.append(f"| all | {(runs[0].get('overall') or {}).get('tokens', '')} | {' | '.join(cells)} |")
    lines.append("")
    lines += [f"- `{c.get('name')}`: {c.get('meaning')}" for c in comparisons]
    recall = report.get("recall") or {}
    if recall.get("dialogues"):
        lines += ["", f"Recall probe ({recall['dialogues']} synthetic recall dialogues, "
                      f"{recall.get('answer_tokens')} answer tokens):", ""]
        for run in recall.get("runs") or []:
            row = (run.get("all") or [{}])[0]
            lines.append(f"- `{run.get('name')}`: answer loss {_figure(row)}"
                         + (f", exact match {row['exact_match']:.1%}" if "exact_match" in row else ""))
        for gap in recall.get("gaps") or []:
            lines.append(f"- Δ `{gap.get('name')}`: {_figure((gap.get('all') or [{}])[0], True)}"
                         + (f", exact match {gap['exact_match_gain']:+.1%}" if "exact_match_gain" in gap else ""))
    return [*lines, ""]
