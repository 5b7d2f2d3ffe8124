"""`omnittt curriculum`: what each curriculum stage of a processed dataset trains on."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import data_argument, data_option, dataset_dir, handle_errors

HELP = (
    "Show the 8k/16k/32k/64k stage table of a processed dataset: per stage the conversations and the sessions "
    "(same-group conversations packed to the stage's length), their share of the data, positions, hours and "
    "learning rate. Empty stages are flagged with what to do.\n\n"
    "Example: [bold]omnittt curriculum --data processed_data --stage 8k --write stage_8k.jsonl[/bold]"
)


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        data: Path = data_option(),
        data_arg: Path = data_argument(),
        stage: str = typer.Option(None, "--stage", "-s", help="Only this stage (8k, 16k, 32k, 64k)."),
        write: Path = typer.Option(None, "--write", "-w", help="Write the stage's conversations and sessions "
                                   "(one JSON line each) to this file; needs --stage."),
    ) -> Any:
        from omnittt.console import console
        from omnittt.data.curriculum import STAGES, get_stage
        from omnittt.data.dataset import open_store, plan_stages
        from omnittt.errors import UserError

        if write is not None and stage is None:
            raise UserError("--write needs --stage",
                            fix="e.g. omnittt curriculum --data DIR --stage 8k --write 8k.jsonl")
        stages = [get_stage(stage)] if stage is not None else list(STAGES)
        store = open_store(dataset_dir(data, data_arg))  # a processed dataset or an audio index
        plans = plan_stages(store, stages)
        render(store, plans, console)
        if write is not None:
            from omnittt.data.store import write_jsonl

            write_jsonl(write, [item.to_dict() for item in plans[0].items])
            console.print(f"{len(plans[0].items):,} conversations/sessions of stage {stage} written to "
                          f"[bold]{write}[/bold]")


def render(store: Any, plans: list[Any], console: Any) -> None:
    from rich.table import Table

    conversations = len({entry["conversation_id"] for entry in store.index})
    positions = sum(int(entry["num_tokens"]) for entry in store.index)
    hours = sum(float(entry.get("audio_duration_sec") or 0.0) for entry in store.index) / 3600
    table = Table(title=f"curriculum of {store.data_dir}: {conversations:,} conversations, {positions:,} positions, "
                        f"{hours:.2f} h of user speech", title_justify="left")
    for column in ("stage", "range", "convs", "sessions", "share", "positions", "hours", "lr", "left out"):
        table.add_column(column, justify="left" if column in ("stage", "left out") else "right")
    empty = []
    for plan in plans:
        stage = plan.stage
        if not plan.items:
            empty.append(plan)
        share = plan.num_source_conversations / conversations if conversations else 0.0
        left_out = ", ".join(part for part in (
            f"{len(plan.too_long)} long" if plan.too_long else "",
            f"{len(plan.leftover)} short" if plan.leftover else "") if part) or "-"
        if not plan.items:
            left_out = f"[red]empty[/red] ({left_out})"
        table.add_row(
            f"[red]{stage.name}[/red]" if not plan.items else stage.name,
            f"{stage.min_positions / 1024:g}k-{stage.max_positions / 1024:g}k",
            f"{len(plan.items) - plan.num_sessions:,}", f"{plan.num_sessions:,}", f"{share:.0%}",
            f"{plan.num_positions:,}", f"{plan.duration_sec / 3600:.2f}", f"{stage.learning_rate:.0e}", left_out,
        )
    console.print(table)
    console.print("[dim]convs: whole conversations inside the range; sessions: same-group conversations packed "
                  "into the range; share: source conversations used; left out: longer than the range, or a "
                  "group's tail too short to pack[/dim]")
    for plan in empty:
        longest = _longest_group(plan, store)
        console.print(
            f"[yellow]stage {plan.stage.name} is empty[/yellow]: no conversation or same-group session reaches "
            f"{plan.stage.min_positions:,} positions (the largest group holds {longest:,} positions in all). "
            "[dim]Fix:[/dim] add more conversations of the same source folder/domain, or a long-form source; "
            "or stop the curriculum before this stage."
        )


def _longest_group(plan: Any, store: Any) -> int:
    groups: dict[str, int] = {}
    by_id = {str(line["conversation_id"]): str(line.get("group") or line.get("source") or "")
             for line in store.manifest}
    for entry in store.index:
        group = by_id.get(str(entry["conversation_id"]), "")
        groups[group] = groups.get(group, 0) + int(entry["num_tokens"])
    return max(groups.values(), default=0)
