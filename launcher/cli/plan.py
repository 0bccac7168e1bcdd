"""``launcher plan JOB.yaml``: GPU memory, the instance types that fit, time and cost, before anything runs.

The arithmetic lives in ``launcher.plan``; this module only prints it (Rich tables, or ``--json``).
A job that does not fit the GPU the spec asks for is shown prominently, but the command still exits 0:
a plan is advice, and ``launcher train`` is where ``check_fits`` refuses.
"""

from __future__ import annotations

from pathlib import Path

import typer

from launcher.cli.common import json_option, output


def register(app: typer.Typer) -> None:
    @app.command("plan")
    def plan_command(
        spec_path: Path = typer.Argument(..., metavar="JOB.yaml", help="The job spec."),
        as_json: bool = json_option(),
        tokens: int = typer.Option(
            None, "--tokens", metavar="N", help="Training tokens in one epoch; skips counting (needed for s3:// or gs:// data)."
        ),
    ) -> None:
        """Estimate GPU memory, fitting instance types, wall time and cost of a job."""
        from launcher.plan import plan
        from launcher.spec import JobSpec

        spec = JobSpec.from_yaml(spec_path)
        result = plan(spec, dataset_tokens=tokens)
        output(result, as_json, lambda r: _print(spec, r))


def _micro_batch(config, tokens: int) -> str:  # noqa: ANN001 - TrainConfig (imported lazily)
    """The micro-batch the memory is planned for, as the arithmetic that gave ``tokens``."""
    rows = tokens // config.max_seq_len
    if rows == config.micro_batch_size:
        return f"micro_batch_size {rows} x max_seq_len {config.max_seq_len} = {tokens:,} tokens per micro-batch"
    step = config.micro_batch_size * config.gradient_accumulation_steps
    return (f"memory planned for {rows} example x max_seq_len {config.max_seq_len} = {tokens:,} tokens per micro-batch "
            f"(the GPU fast path sizes its micro-batches from measured memory; micro_batch_size {config.micro_batch_size} "
            f"x gradient_accumulation_steps {config.gradient_accumulation_steps} = {step} rows still make each step)")


def _gib(value: float | None) -> str:
    return "-" if value is None else f"{value / (1 << 30):.1f}"


def _money(value: float | None) -> str:
    return "-" if value is None else f"${value:,.2f}"


def _print(spec, result) -> None:  # noqa: ANN001 - JobSpec, Plan (imported lazily)
    from rich.console import Console
    from rich.panel import Panel
    from rich.table import Table

    from launcher import catalog
    from launcher.errors import SpecError
    from launcher.plan import check_fits

    console = Console()
    if not console.is_terminal:
        console = Console(width=150)
    shape, config = result.model, spec.train_config()
    targets = "all linear layers" if config.target_modules == "all-linear" else ", ".join(config.target_modules)
    size = f"{shape.params / 1e9:.2f}B" if shape.params >= 1e9 else f"{shape.params / 1e6:.1f}M"
    console.print(
        f"[bold]{spec.name}[/]: {result.base_model} ({size} params, {shape.layers} layers, hidden "
        f"{shape.hidden}, vocab {shape.vocab:,}), {result.method.upper()} r={config.lora_r} on {targets}"
    )
    console.print(f"{_micro_batch(config, result.memory.micro_batch_tokens)}; gradient_checkpointing {config.gradient_checkpointing}")

    memory = Table(title="GPU memory per GPU", title_justify="left")
    memory.add_column("term")
    memory.add_column("GiB", justify="right")
    memory.add_column("how")
    for term, value, how in result.memory.rows():
        style = "bold" if term.startswith("total") else None
        memory.add_row(term, _gib(value), how, style=style)
    console.print(memory)

    data = result.dataset
    if data.tokens is None:
        console.print(f"[yellow]Dataset: {data.note}[/]")
    else:
        console.print(f"Dataset: {data.tokens:,} tokens per epoch ({data.method}: {data.note}) x {result.epochs} epochs")

    try:
        check_fits(spec)
    except SpecError as exc:
        console.print(Panel(str(exc), title=f"the requested {result.requested} does not fit", style="bold red"))

    rows = Table(title="Instance types (cheapest first; > marks the requested one)", title_justify="left")
    for name, justify in [("", "left"), ("cloud", "left"), ("type", "left"), ("GPUs", "left"), ("fits", "left"),
                          ("GiB needed / per GPU", "right"), ("ckpt", "left"), ("parallel", "left"), ("tok/s", "right"), ("hours", "right"),
                          ("on demand", "right"), ("spot", "right")]:  # fmt: skip
        rows.add_column(name, justify=justify)
    for row in result.candidates:
        gpus = f"{row.nodes}x{row.gpus}x {row.gpu}" if row.nodes > 1 else f"{row.gpus}x {row.gpu}"
        shown = row.fits
        style = "bold green" if row.requested and row.fits else "bold red" if row.requested else None if row.fits else "dim"
        rows.add_row(
            ">" if row.requested else "",
            row.cloud,
            row.instance_type,
            gpus,
            "yes" if row.fits else "NO",
            f"{_gib(row.memory_needed)} / {_gib(row.gpu_memory)}",
            "on" if row.gradient_checkpointing else "off",
            {"single": "-", "ddp": "DDP", "fsdp": "FSDP"}[row.strategy],
            f"{row.tokens_per_s:,.0f}" if row.tokens_per_s and shown else "-",
            f"{row.hours:.2f}" if row.hours is not None and shown else "-",
            _money(row.on_demand_cost) if shown else "-",
            (_money(row.spot_cost) if row.spot_allowed else "no spot") if shown else "-",
            style=style,
        )
    console.print(rows)

    prices = catalog.load("prices")
    throughput = catalog.load("throughput")
    regions = ", ".join(f"{cloud} {section['region']}" for cloud, section in prices["clouds"].items())
    measured = ", ".join(sorted({f"{e['gpu']} {e['method']}" for e in throughput["entries"] if e["source"] == "measured"}))
    console.print(
        f"Prices: approximate list prices as of {prices['as_of']} ({prices['currency']}; {regions}), "
        "launcher/catalog/prices.json; check them before budgeting."
    )
    console.print(
        f"Time: throughput measured for {measured}, other GPU kinds scaled by bf16 peak (launcher/catalog/throughput.json); "
        f"{throughput['data_parallel_efficiency_per_doubling']:.0%} efficiency per doubling of GPUs; "
        f"+{throughput['fixed_overhead_minutes']} min fixed overhead."
    )
    for note in result.notes:
        console.print(f"[yellow]Note: {note}[/]")
