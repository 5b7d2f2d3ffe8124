"""`omnittt train`: train a TTT speech model conversation by conversation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import data_option, handle_errors

HELP = (
    "Train a TTT speech model conversation by conversation.\n\n"
    "Each conversation starts from the learned TTT state and carries it across its exchanges; one optimizer step "
    "is one truncated-BPTT window of --tbptt-turns exchanges. Checkpoints (safetensors, no pickle) go to "
    "RUN/checkpoints/step_N every --save-every steps; `omnittt resume RUN` continues exactly.\n\n"
    "Curriculum: `--stage 16k` with the same --run continues from the finished 8k stage's final checkpoint "
    "(weights and step count carry on; the 16k sessions and learning rate are new).\n\n"
    "Settings: defaults < --config FILE.yaml < flags < --set key=value.\n\n"
    "Several processes: --num-processes N runs N data-parallel processes through `accelerate launch` (one per "
    "GPU; gloo on CPU), each on its own conversations; only the first writes the run directory.\n\n"
    "Example: [bold]omnittt train --preset tiny --data processed_data --stage 8k --max-steps 200[/bold]"
)


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        preset: str = typer.Option(None, "--preset", help="Model preset: tiny or llama-omni-8b."),
        model: Path = typer.Option(None, "--model", help="Local model directory (a checkpoint, an export, or "
                                   "a LLaMA-Omni / Llama download) to start from."),
        data: Path = data_option(),
        stage: str = typer.Option(None, "--stage", help="Curriculum stage: 8k, 16k, 32k, 64k (sessions packed "
                                  "to the stage's length), or none (whole conversations). Default 8k."),
        allow_skip: bool = typer.Option(False, "--allow-skip", help="Start a later stage without the previous "
                                        "one's checkpoint (from --model DIR or the preset)."),
        run: Path = typer.Option(None, "--run", help="Run directory (default: runs/<preset or model name>)."),
        config: Path = typer.Option(None, "--config", help="YAML settings file (see a run's config.yaml)."),
        max_steps: int = typer.Option(None, "--max-steps", help="Optimizer steps (default: --epochs passes)."),
        epochs: int = typer.Option(None, "--epochs", help="Passes over the stage's conversations."),
        save_every: int = typer.Option(None, "--save-every", help="Checkpoint every N optimizer steps."),
        train: str = typer.Option(None, "--train", help="Trainable groups: ttt,projector (default), all, or a "
                                  "comma list of ttt_init, ttt, projector, llm, encoder."),
        tbptt_turns: int = typer.Option(None, "--tbptt-turns", help="Exchanges per truncated-BPTT window."),
        batch_size: int = typer.Option(None, "--batch-size", help="Conversations started together."),
        gradient_accumulation: int = typer.Option(None, "--gradient-accumulation",
                                                  help="TBPTT windows per optimizer step."),
        lr: float = typer.Option(None, "--lr", help="Base learning rate (default: the stage's)."),
        ttt_layers: str = typer.Option(None, "--ttt-layers", help="Comma list of TTT layer indices ('' for the "
                                       "attention-only baseline)."),
        ttt_mini_batch_size: int = typer.Option(None, "--ttt-mini-batch-size", help="TTT mini-batch size b."),
        attention_window: int = typer.Option(None, "--attention-window",
                                             help="Sliding window of the remaining attention layers."),
        mixed_precision: str = typer.Option(None, "--mixed-precision", help="auto (bf16 on a GPU), no, bf16."),
        gradient_checkpointing: bool = typer.Option(None, "--gradient-checkpointing/--no-gradient-checkpointing",
                                                    help="Recompute decoder layers in backward (cache kept)."),
        val_conversations: int = typer.Option(None, "--val-conversations",
                                              help="Hold out the last N conversations for validation."),
        seed: int = typer.Option(None, "--seed", help="Seed for init and data order."),
        num_threads: int = typer.Option(None, "--num-threads", help="torch CPU threads (restored on resume)."),
        resume_from: Path = typer.Option(None, "--resume-from", help="Start from this checkpoint's weights "
                                         "(transfer / fine-tune; a run directory means its latest)."),
        init_from: Path = typer.Option(None, "--init-from", help="Fine-tune: start from this checkpoint's weights "
                                       "only, with a fresh optimizer, schedule and step (= --resume-from CKPT "
                                       "--reset-optimizer --reset-step), e.g. after audio pre-training."),
        objective: str = typer.Option(None, "--objective", help="text (assistant replies, default) or audio "
                                      "(pre-training on long recordings: --data an audio index of `omnittt "
                                      "preprocess librilight`)."),
        reset_optimizer: bool = typer.Option(False, "--reset-optimizer", help="With --resume-from: fresh optimizer."),
        reset_step: bool = typer.Option(False, "--reset-step", help="With --resume-from: step and schedule from 0."),
        overrides: list[str] = typer.Option([], "--set", help="Any setting as key=value (repeatable)."),
        overwrite: bool = typer.Option(False, "--overwrite", help="Replace an existing run in --run."),
        num_processes: int = typer.Option(1, "--num-processes", help="Data-parallel processes (through "
                                          "`accelerate launch`; one per GPU)."),
        log_with: str = typer.Option(None, "--log-with", help="Also log step scalars to: tensorboard "
                                     "(RUN/tensorboard/; needs the tensorboard package)."),
        print_config: bool = typer.Option(False, "--print-config", help="Print the resolved settings and exit."),
    ) -> Any:
        from omnittt.config import parse_dotted_overrides
        from omnittt.errors import UserError
        from omnittt.train.settings import TrainSettings

        settings = TrainSettings.load_yaml(config) if config else TrainSettings()
        if init_from is not None:
            if resume_from is not None:
                raise UserError("--init-from and --resume-from both name a checkpoint",
                                fix="--init-from CKPT (weights only) or --resume-from CKPT (also its optimizer)")
            resume_from, reset_optimizer, reset_step = init_from, True, True
        layers = None
        if ttt_layers is not None:
            try:
                layers = [int(x) for x in ttt_layers.split(",") if x.strip()]
            except ValueError:
                raise UserError(f"--ttt-layers {ttt_layers!r} is not a comma list of integers",
                                fix="e.g. --ttt-layers 2,3") from None
        flags = {
            "preset": preset, "model": _str(model), "data": _str(data), "stage": stage, "run": _str(run),
            "max_steps": max_steps, "epochs": epochs, "save_every": save_every, "train": train,
            "tbptt_turns": tbptt_turns, "batch_size": batch_size, "gradient_accumulation": gradient_accumulation,
            "lr": lr, "ttt_layers": layers, "ttt_mini_batch_size": ttt_mini_batch_size,
            "attention_window": attention_window, "mixed_precision": mixed_precision,
            "gradient_checkpointing": gradient_checkpointing, "val_conversations": val_conversations,
            "seed": seed, "num_threads": num_threads, "resume_from": _str(resume_from),
            "allow_skip": allow_skip or None, "reset_optimizer": reset_optimizer or None,
            "reset_step": reset_step or None, "log_with": log_with, "objective": objective,
        }
        if preset is not None or model is not None:  # a model flag replaces the config file's model choice
            settings.preset, settings.model = preset, _str(model)
        settings = settings.with_overrides(flags).with_overrides(parse_dotted_overrides(overrides))
        if (settings.reset_optimizer or settings.reset_step) and not settings.resume_from:
            raise UserError("--reset-optimizer / --reset-step need --resume-from CKPT",
                            fix="add --resume-from runs/NAME (or a checkpoint folder)")
        settings.require_model()
        if print_config:
            import yaml

            typer.echo(yaml.safe_dump(settings.to_dict(), sort_keys=False))
            return
        if num_processes > 1 or num_processes < 1:
            relaunch_train(settings, num_processes, overwrite)
            return
        from omnittt.train.setup import start_run

        run_prepared(lambda console: start_run(settings, overwrite=overwrite, console=console))


def relaunch_train(settings: Any, num_processes: int, overwrite: bool) -> None:
    """`omnittt train` again in `num_processes` processes, with these resolved settings as its config file
    (inside a launched process: train here, as one of them)."""
    import tempfile

    from omnittt.train.distributed import launch, launched
    from omnittt.train.setup import start_run

    if launched():
        run_prepared(lambda console: start_run(settings, overwrite=overwrite, console=console))
        return
    with tempfile.TemporaryDirectory(prefix="omnittt-launch-") as tmp:
        config = Path(tmp) / "settings.yaml"
        settings.dump_yaml(config)
        argv = ["train", "--config", str(config), "--num-processes", str(num_processes)]
        exit_with(launch(argv + (["--overwrite"] if overwrite else []), num_processes))


def exit_with(code: int) -> None:
    """The launched processes' exit status (a user error has already printed its one line)."""
    if code == 2:
        raise typer.Exit(code)
    if code:
        from omnittt.console import err_console

        err_console.print(f"[red]error:[/red] a training process failed (exit status {code}); see its message above")
        raise typer.Exit(code)


def _str(path: Path | None) -> str | None:
    return str(path) if path is not None else None


def run_prepared(prepare: Any) -> None:
    """Build (printing what was resolved), train with a progress bar, end with a results table."""
    import time

    from rich.progress import TextColumn

    from omnittt.console import console, make_progress
    from omnittt.train.distributed import launched

    started = time.perf_counter()
    if launched():  # one of several processes: only the main one talks
        prepared = prepare(None)
        if not prepared.trainer.processes.is_main:
            prepared.trainer.fit(None)
            return
    else:
        with console.status("preparing the model and the data ..."):
            prepared = prepare(console)
    _print_start(prepared)
    trainer = prepared.trainer
    with make_progress(TextColumn("loss {task.fields[loss]}"), TextColumn("{task.fields[tps]} tok/s")) as progress:
        trainer.fit(progress if prepared.settings.progress else None)
    _print_end(prepared, time.perf_counter() - started)


def _print_start(prepared: Any) -> None:
    from rich.panel import Panel
    from rich.table import Table

    from omnittt.console import console

    s, config, summary = prepared.settings, prepared.config, prepared.summary
    grid = Table.grid(padding=(0, 2))
    grid.add_column(style="bold")
    grid.add_column()
    dataset = config["dataset"]
    rows = [
        ("run", str(prepared.run.path) + (f"  (resumed from {prepared.resumed_from.name})"
                                           if prepared.resumed_from else "")),
        ("model", f"{config['model_source']}: {summary['num_layers']} layers, TTT layers {summary['ttt_layers']} "
                  f"({summary['ttt_type']}, b={summary['ttt_mini_batch_size']}), "
                  f"{summary['trainable']['total']:,} of {summary['parameters']['total']:,} parameters trained"),
        ("groups", ", ".join(f"{g['name']} lr {g['lr']:.2g}" for g in summary["parameter_groups"])),
        ("data", f"{s.data}: stage {config['stage']['name']}, {config['conversations']['train']} conversations"
                 + (f" (+{config['conversations']['validation']} validation)"
                    if config['conversations']['validation'] else "")),
        ("dataset settings", f"tokenizer {dataset.get('tokenizer_name')} "
                             f"({str(dataset.get('tokenizer_fingerprint'))[:12]}), mini-batch "
                             f"{dataset.get('mini_batch_size')}, speech {dataset.get('speech_positions')}"),
        ("steps", f"{config['total_steps']} optimizer steps: batch {s.batch_size} x {s.tbptt_turns} exchanges per "
                  f"window x {s.gradient_accumulation} windows; warmup {s.warmup_steps}, cosine to "
                  f"{s.min_lr_ratio:g}x"),
        ("numerics", f"mixed precision {config['mixed_precision']}, TTT state float32 (checked every "
                     f"{s.fp32_check_every} steps), clip {s.max_grad_norm}, {config['num_threads']} threads"
                     + (f" x {config['num_processes']} processes" if config.get("num_processes", 1) > 1 else "")),
        ("saved", f"config.yaml, model_summary.json; checkpoints every {s.save_every} steps "
                  f"(keep {s.keep_checkpoints})"),
    ]
    for key, value in rows:
        grid.add_row(key, value)
    console.print(Panel(grid, title="omnittt train", expand=False))


def _print_end(prepared: Any, elapsed: float) -> None:
    from rich.table import Table

    from omnittt.console import console

    trainer = prepared.trainer
    table = Table(title="training finished", show_header=False)
    table.add_column(style="bold")
    table.add_column()
    table.add_row("steps", f"{trainer.step} / {trainer.total_steps}")
    table.add_row("positions trained", f"{trainer.state.tokens:,}")
    if trainer.state.skipped:
        table.add_row("skipped windows (NaN/Inf)", f"[yellow]{trainer.state.skipped}[/yellow]")
    if trainer.last_val_loss is not None:
        table.add_row("validation loss", f"{trainer.last_val_loss:.4f}")
    table.add_row("checkpoint", str(trainer.last_checkpoint))
    table.add_row("metrics", str(prepared.run.metrics_path))
    table.add_row("time", f"{elapsed:.1f} s")
    console.print(table)
    console.print(f"next: [bold]omnittt monitor {prepared.run.path}[/bold] or [bold]omnittt resume "
                  f"{prepared.run.path} --max-steps N[/bold]")
