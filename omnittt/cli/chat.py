"""`omnittt chat`: a terminal speech conversation whose TTT state persists across turns.

Each line you type is a user turn: the path of an audio file (wav/flac/ogg/mp3, any rate and channels), typed text,
or (with --mic) an empty line, which records from the microphone until Enter. Lines starting with `/` are commands.
`--script FILE` reads the same lines from a file and prints the transcript."""

from __future__ import annotations

import shutil
import signal
import subprocess
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import typer

from omnittt.cli._common import handle_errors, report_user_error, state
from omnittt.errors import UserError

HELP = """Talk to a trained model; its TTT state carries from turn to turn.

Each turn is an audio file path, typed text, or (with --mic) Enter to record. Commands: /reset (new conversation),
/state (TTT state and KV per layer), /save FILE and /load FILE (conversation state, safetensors), /quit.
--script FILE runs the same lines non-interactively (audio paths relative to the script) and prints a transcript.

Examples:
  [bold]omnittt chat --run runs/tiny[/bold]
  [bold]omnittt chat --model exported/tiny --script demo.txt --temperature 0 --transcript demo.jsonl[/bold]"""

COMMANDS = {
    "/reset": "start a new conversation (TTT state back to the learned init, KV emptied)",
    "/state": "per-layer TTT state norms, dtype, positions seen, KV positions held",
    "/save": "/save FILE: write the conversation state (safetensors)",
    "/load": "/load FILE: continue a saved conversation",
    "/help": "show this list",
    "/quit": "leave",
}
AUDIO_SUFFIXES = {".wav", ".flac", ".ogg", ".oga", ".opus", ".mp3", ".aif", ".aiff", ".au", ".w64", ".caf"}


@dataclass
class Line:
    kind: str  # "empty" | "command" | "audio" | "text"
    value: str = ""
    argument: str = ""


def parse_line(raw: str, base: Path | None = None) -> Line:
    """A typed or scripted line: a /command, an audio file (an existing file, or any name with an audio suffix,
    so a typo is reported instead of being sent to the model as text), or text. Paths may be quoted or have
    backslash-escaped spaces (what terminals paste for a dragged file); relative ones resolve against `base`."""
    line = raw.strip()
    if not line:
        return Line("empty")
    word, _, rest = line.partition(" ")
    if word.lower() in COMMANDS:
        return Line("command", word.lower(), rest.strip())
    candidate = line
    if len(candidate) >= 2 and candidate[0] == candidate[-1] and candidate[0] in "'\"":
        candidate = candidate[1:-1]
    candidate = candidate.replace("\\ ", " ")
    path = Path(candidate).expanduser()
    if base is not None and not path.is_absolute():
        path = base / path
    if path.is_file() or (path.suffix.lower() in AUDIO_SUFFIXES and " " not in candidate.strip()):
        return Line("audio", str(path))
    if line.startswith("/") and " " not in line:
        raise UserError(f"unknown command {line}", fix=f"commands: {', '.join(COMMANDS)}")
    return Line("text", line)


def register(app: typer.Typer) -> None:
    @app.command(help=HELP)  # name and short help: omnittt.cli.commands
    @handle_errors
    def command(
        run: str | None = typer.Option(None, "--run", help="Run directory (its latest checkpoint) or a checkpoint."),
        model: str | None = typer.Option(None, "--model", help="Model directory (omnittt export, a checkpoint)."),
        script: Path | None = typer.Option(None, "--script", help="Run the turns and commands of this file, "
                                           "one per line (# comments), and print the transcript."),
        mic: bool = typer.Option(False, "--mic", help="Record turns from the microphone (Enter to start and stop; "
                                 "needs the sounddevice package)."),
        speak: bool = typer.Option(False, "--speak", help="Speak replies with espeak-ng."),
        attention_window: int | None = typer.Option(None, "--attention-window", help="Attention layers look at "
                                                    "the last N positions only: bounded memory and time per token."),
        temperature: float | None = typer.Option(None, "--temperature", help="0 = greedy. Default: the model's "
                                                 "generation_config.json, else 0.7."),
        top_p: float | None = typer.Option(None, "--top-p", help="Nucleus sampling mass (default 0.9)."),
        max_new_tokens: int | None = typer.Option(None, "--max-new-tokens", help="Longest reply (default 256)."),
        seed: int | None = typer.Option(None, "--seed", help="Seed sampling (a script then replays exactly)."),
        load: Path | None = typer.Option(None, "--load", help="Start from a conversation saved with /save."),
        transcript: Path | None = typer.Option(None, "--transcript", help="Also write the transcript and /state "
                                               "snapshots as JSON lines."),
        device: str | None = typer.Option(None, "--device", help="cpu, cuda, cuda:1 ... (default: cuda if any)."),
        dtype: str | None = typer.Option(None, "--dtype", help="float32, bfloat16 or float16 (default: stored)."),
        speech_encoder: str | None = typer.Option(None, "--speech-encoder", help="Whisper encoder for a released "
                                                  "LLaMA-Omni --model directory."),
    ) -> Any:
        from omnittt.console import console

        if mic and script is not None:
            raise UserError("--mic and --script both given", fix="a script names audio files; drop --mic")
        if script is not None and not script.is_file():
            raise UserError(f"{script}: no such script", fix="one user turn or /command per line")
        recorder = _check_mic() if mic else None
        if speak and shutil.which("espeak-ng") is None:
            raise UserError("--speak needs espeak-ng, which is not on PATH",
                            fix="install it (apt install espeak-ng) or drop --speak")
        from omnittt.chat import open_chat

        generation = {"temperature": temperature, "top_p": top_p, "max_new_tokens": max_new_tokens, "seed": seed}
        with console.status("loading the model ..."):
            session, source = open_chat(run, model, attention_window=attention_window, device=device, dtype=dtype,
                                        speech_encoder=speech_encoder, generation=generation)
        chat = Chat(session, console, speak=speak, recorder=recorder, transcript=transcript)
        chat.banner(source)
        if load is not None:
            chat.run_command(Line("command", "/load", str(load)))
        try:
            if script is not None:
                chat.run_script(script)
            else:
                chat.interactive()
        finally:
            chat.write_transcript()


def _check_mic() -> Any:
    try:
        import sounddevice
    except ImportError:
        raise UserError("--mic needs the sounddevice package, which is not installed",
                        fix="pip install sounddevice (it needs PortAudio), or give audio file paths") from None
    except OSError as exc:
        raise UserError(f"--mic: sounddevice cannot load PortAudio ({exc})",
                        fix="install PortAudio (apt install libportaudio2), or give audio file paths") from None
    return sounddevice


class Chat:
    """The terminal front end over a `ChatSession`: input lines, commands, streamed replies, transcript."""

    def __init__(self, session: Any, console: Any, speak: bool = False, recorder: Any = None,
                 transcript: Path | None = None) -> None:
        self.session = session
        self.console = console
        self.speak = speak
        self.recorder = recorder
        self.transcript = transcript
        self.events: list[dict[str, Any]] = []

    # -- loops -----------------------------------------------------------------------------------------------
    def banner(self, source: Any) -> None:
        settings = self.session.generation
        summary = self.session.state_summary()
        ttt = [entry["layer"] for entry in summary["layers"] if entry["kind"].startswith("ttt")]
        where = f"run {source.run}" if source.run else source.path
        step = f", step {source.step}" if source.step is not None else ""
        window = summary["attention_window"]
        self.console.print(
            f"[bold]omnittt chat[/bold] · {where}{step} · TTT layers {ttt or 'none'} · attention "
            f"{'window ' + str(window) if window else 'full'} · temperature {settings.temperature}, top_p "
            f"{settings.top_p}, max {settings.max_new_tokens} tokens", highlight=False)

    def interactive(self) -> None:
        hint = "an audio file path, text" + (", Enter to record" if self.recorder else "")
        self.console.print(f"[dim]Type {hint}; /help for commands, /quit to leave.[/dim]")
        while True:
            try:
                raw = self.console.input("[bold cyan]you ›[/bold cyan] ")
            except (EOFError, KeyboardInterrupt):
                self.console.print()
                return
            try:
                line = parse_line(raw)
                if line.kind == "empty":
                    if self.recorder is None:
                        continue
                    self.turn_from_mic()
                elif line.kind == "command":
                    if not self.run_command(line):
                        return
                else:
                    self.turn(line)
            except UserError as exc:  # a bad turn or command: say so and keep the conversation going
                report_user_error(exc)

    def run_script(self, script: Path) -> None:
        base = script.resolve().parent
        for number, raw in enumerate(script.read_text().splitlines(), start=1):
            if raw.strip().startswith("#"):
                continue
            try:
                line = parse_line(raw, base)
            except UserError as exc:
                raise UserError(f"{script}:{number}: {exc.message}", fix=exc.fix) from None
            if line.kind == "empty":
                continue
            self.console.print(f"[bold cyan]you ›[/bold cyan] {raw.strip()}", highlight=False)
            if line.kind == "command":
                if not self.run_command(line, base):
                    return
            else:
                self.turn(line)

    # -- turns -----------------------------------------------------------------------------------------------
    def turn(self, line: Line) -> None:
        if line.kind == "audio":
            self.reply(audio=line.value)
        else:
            self.reply(text=line.value)

    def turn_from_mic(self) -> None:
        import numpy as np

        frames: list[Any] = []
        device = self.recorder.query_devices(kind="input")
        rate = int(device["default_samplerate"])

        def keep(data: Any, _frames: int, _time: Any, _status: Any) -> None:
            frames.append(data.copy())

        with self.recorder.InputStream(samplerate=rate, channels=1, dtype="float32", callback=keep):
            self.console.input("[bold red]● recording[/bold red] [dim](Enter to stop)[/dim] ")
        audio = np.concatenate(frames) if frames else np.zeros((0, 1), dtype=np.float32)
        if len(audio) < rate // 10:
            raise UserError("nothing recorded (under 0.1 s)", fix="press Enter, speak, then press Enter again")
        self.reply(audio=audio, sample_rate=rate, label="microphone")

    def reply(self, **user: Any) -> None:
        from rich.live import Live
        from rich.text import Text

        prefix = ("assistant › ", "bold green")
        pieces: list[str] = []
        previous = signal.getsignal(signal.SIGINT)
        # transient: the streamed text is replaced by the final reply printed once (terminals and pipes alike)
        with Live(Text.assemble(prefix), console=self.console, refresh_per_second=12, transient=True) as live:
            def show(piece: str) -> None:
                pieces.append(piece)
                live.update(Text.assemble(prefix, "".join(pieces)))

            # Ctrl-C ends the reply after the current token (the exchange is then closed as usual), instead of
            # stopping inside the model, which would leave the state half-updated
            signal.signal(signal.SIGINT, lambda *_: self.session.interrupt())
            try:
                result = self.session.user_turn(on_text=show, **user)
            except RuntimeError as exc:  # e.g. out of memory: one line, and the session refuses to go on silently
                if state["verbose"]:
                    raise
                raise UserError(f"the model failed during this turn ({exc.__class__.__name__}: "
                                f"{str(exc).splitlines()[0][:160] if str(exc) else ''})",
                                fix="/reset or /load a saved conversation; if out of memory, use --attention-window "
                                    "N or --dtype bfloat16") from None
            finally:
                signal.signal(signal.SIGINT, previous)
        self.console.print(Text.assemble(prefix, result.text))
        stop = "" if result.stop_reason == "eot" else f" · stopped: {result.stop_reason.replace('_', ' ')}"
        first = f" · first token {result.first_token_seconds:.2f} s" if result.first_token_seconds else ""
        self.console.print(
            f"[dim]turn {self.session.turns} · {result.user} · {len(result.token_ids)} tokens · "
            f"{result.seconds:.2f} s{first} · {result.positions} positions{stop}[/dim]", highlight=False)
        self.events.append({"event": "turn", "turn": self.session.turns, "user": result.user, "reply": result.text,
                            "stop_reason": result.stop_reason, "new_tokens": len(result.token_ids),
                            "prompt_positions": result.prompt_positions, "positions": result.positions,
                            "seconds": round(result.seconds, 4),
                            "first_token_seconds": None if result.first_token_seconds is None
                            else round(result.first_token_seconds, 4)})
        if self.speak and result.text:
            subprocess.run(["espeak-ng"], input=result.text.encode("utf-8"), capture_output=True, check=False)

    # -- commands --------------------------------------------------------------------------------------------
    def run_command(self, line: Line, base: Path | None = None) -> bool:
        """Run a /command; False means quit."""
        name, argument = line.value, line.argument
        if name == "/quit":
            return False
        if name == "/help":
            for command, text in COMMANDS.items():
                self.console.print(f"  [bold]{command}[/bold]  {text}", highlight=False)
        elif name == "/reset":
            self.session.reset()
            self.console.print("[yellow]new conversation[/yellow] (TTT state reset, KV emptied)")
            self.events.append({"event": "reset"})
        elif name == "/state":
            summary = self.session.state_summary()
            self.console.print(state_table(summary))
            self.events.append({"event": "state", **summary})
        elif name in ("/save", "/load"):
            if not argument:
                raise UserError(f"{name} needs a file name", fix=f"e.g. {name} conversation.safetensors")
            path = Path(argument.strip("'\"")).expanduser()
            if base is not None and not path.is_absolute():
                path = base / path
            if name == "/save":
                self.session.save(path)
            else:
                self.session.load(path)
            done = "saved to" if name == "/save" else "loaded from"
            self.console.print(f"{done} {path}: {_count(self.session.turns, 'turn')}, {self.session.positions} "
                               "positions", highlight=False)
            self.events.append({"event": name[1:], "file": str(path), "turns": self.session.turns,
                                "positions": self.session.positions})
        return True

    def write_transcript(self) -> None:
        if self.transcript is None:
            return
        import json

        from omnittt.atomic import atomic_write_text

        atomic_write_text(self.transcript, "".join(json.dumps(event) + "\n" for event in self.events))


def state_table(summary: dict[str, Any]) -> Any:
    from rich.table import Table

    window = summary["attention_window"]
    title = (f"conversation state: {_count(summary['turns'], 'turn')}, {summary['positions']} positions, attention "
             f"{'window ' + str(window) if window else 'full'}\nTTT state {_size(summary['ttt_state_bytes'])}, "
             f"KV {_size(summary['kv_bytes'])}, mask history {_size(summary['mask_history_bytes'])}")
    table = Table(title=title, title_justify="left")
    table.add_column("layer", justify="right")
    table.add_column("kind")
    table.add_column("‖W1‖ ‖b1‖ ‖W2‖ ‖b2‖", no_wrap=True)
    table.add_column("dtype")
    table.add_column("TTT stream (pending)", justify="right")
    table.add_column("KV held", justify="right")
    for entry in summary["layers"]:
        norms = entry.get("norms", {})
        kind = {"attention": "attention", "sliding-attention": "attention (window)"}.get(
            entry["kind"], entry["kind"].upper()) + (" (init)" if entry.get("initial") else "")
        stream = f"{entry['stream_position']} ({entry['pending']})" if "stream_position" in entry else ""
        table.add_row(str(entry["layer"]), kind, " ".join(f"{norms[k]:.3g}" for k in norms),
                      entry.get("dtype", entry.get("kv_dtype", "")).replace("float", "fp"), stream,
                      str(entry.get("kv_positions", "")))
    return table


def _count(n: int, noun: str) -> str:
    return f"{n} {noun}{'' if n == 1 else 's'}"


def _size(n: int) -> str:
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return f"{n} B"
