"""The `moft` command: run the pipeline, run one stage (for dvc.yaml), inspect configuration."""

from __future__ import annotations

import json
import sys
from pathlib import Path
from typing import Annotated, Optional

import typer

from moft.config import ConfigError, MoftConfig, PROJECT_ROOT, available_profiles, load_config, reference

app = typer.Typer(add_completion=False, no_args_is_help=True, help=__doc__)
config_app = typer.Typer(no_args_is_help=True, help="Inspect profiles and the configuration tree.")
app.add_typer(config_app, name="config")

Profile = Annotated[
    Optional[str], typer.Option("--profile", "-p", help="Profile name (configs/<name>.yaml).")
]
Overrides = Annotated[
    Optional[list[str]],
    typer.Option("--set", "-s", help="Override a config field: dotted.key=value (repeatable)."),
]


def _config(profile: str | None, overrides: list[str] | None) -> MoftConfig:
    try:
        return load_config(profile, overrides or [])
    except ConfigError as exc:
        typer.secho(str(exc), fg="red", err=True)
        raise typer.Exit(2) from None


@app.command()
def run(
    profile: Profile = None,
    overrides: Overrides = None,
    tracking: Annotated[bool, typer.Option(help="Track in MLflow.")] = True,
) -> None:
    """Run the whole pipeline as a Prefect flow and print the Pareto summary."""
    cfg = _config(profile, overrides)
    sys.path.insert(0, str(PROJECT_ROOT))
    from flows.pipeline import pipeline

    result = pipeline(profile=cfg.profile, overrides=list(overrides or []), tracking=tracking)
    typer.echo(Path(result["summary_md"]).read_text())


@app.command()
def stage(
    name: Annotated[str, typer.Argument(help="prepare | validate | train_base | finetune | evaluate | report")],
    profile: Profile = None,
    overrides: Overrides = None,
    method: Annotated[Optional[str], typer.Option(help="Method, for the finetune stage.")] = None,
    tracking: Annotated[bool, typer.Option(help="Log a standalone MLflow run.")] = True,
) -> None:
    """Run one pipeline stage (what dvc.yaml calls)."""
    from moft import stages
    from moft.tracker import NullTracker

    cfg = _config(profile, overrides)
    if name not in stages.STAGES:
        typer.secho(f"unknown stage {name!r}; stages: {', '.join(stages.STAGES)}", fg="red", err=True)
        raise typer.Exit(2)
    if name == "finetune" and method is None:
        typer.secho("the finetune stage needs --method", fg="red", err=True)
        raise typer.Exit(2)
    kwargs = {"method": method} if name == "finetune" else {}
    fn = getattr(stages, name)
    label = f"finetune:{method}" if method else name
    try:
        if tracking and cfg.tracking.enabled:
            from moft.tracking import stage_run

            with stage_run(cfg, label) as tracker:
                out = fn(cfg, tracker=tracker, **kwargs)
        else:
            out = fn(cfg, tracker=NullTracker(), **kwargs)
    except Exception as exc:  # a readable one-screen error for the CLI user
        typer.secho(f"stage {label} failed: {exc}", fg="red", err=True)
        raise typer.Exit(1) from None
    if name == "report":
        typer.echo(Path(out).read_text())
    typer.echo(f"{label}: {out}")


@app.command()
def score(
    model: Annotated[str, typer.Option(help="models:/<name>@champion, models:/<name>/<version>, runs:/<id>/model, a run id or a model directory.")],
    input: Annotated[Path, typer.Option("--input", "-i", help="LETOR/svmlight file of groups to rank (plain or .gz).")],
    weights: Annotated[Optional[str], typer.Option(help="Trade-off w, comma-separated, on the simplex (default: uniform).")] = None,
    beta_scale: Annotated[float, typer.Option(help="Temperature scale c > 0 (Proposition 3.1); 1 = as trained.")] = 1.0,
    output: Annotated[Optional[Path], typer.Option("--output", "-o", help="Per-item CSV; rankings go to <stem>.rankings.csv beside it.")] = None,
) -> None:
    """Rank the groups of a file at any trade-off and temperature with a trained front."""
    from mlflow.exceptions import MlflowException

    from moft.serving import score_file

    try:
        w = [float(x) for x in weights.split(",")] if weights else None
    except ValueError:
        typer.secho(f"--weights {weights!r} must be comma-separated numbers", fg="red", err=True)
        raise typer.Exit(2) from None
    try:
        items, rankings = score_file(model, input, w, beta_scale, output)
    except (MlflowException, ValueError, FileNotFoundError, OSError) as exc:
        message = exc.message if isinstance(exc, MlflowException) else str(exc)
        typer.secho(f"moft score: {message}", fg="red", err=True)
        raise typer.Exit(2) from None
    if output is None:
        typer.echo(rankings.to_csv(index=False), nl=False)
    else:
        typer.echo(f"scored {len(items)} items in {len(rankings)} groups -> {output} and "
                   f"{output.with_name(output.stem + '.rankings.csv')}")


@app.command()
def generate(
    model: Annotated[Path, typer.Option(help="A trained LM front: artifacts/<profile>/finetune/<method>.")],
    weights: Annotated[str, typer.Option(help="Trade-off w, comma-separated, one per objective, on the simplex.")],
    prompt: Annotated[Optional[list[str]], typer.Option("--prompt", help="A prompt (repeatable).")] = None,
    input: Annotated[Optional[Path], typer.Option("--input", "-i", help="A text file, one prompt per line.")] = None,
    profile: Profile = None,
    overrides: Overrides = None,
) -> None:
    """Steer a trained LM front: one response per prompt at the trade-off --weights."""
    from moft.llm.stages import load_front
    from moft.online.front import steer

    prompts = list(prompt or [])
    if input is not None:
        if not input.is_file():
            typer.secho(f"moft generate: --input {input} is not a file", fg="red", err=True)
            raise typer.Exit(2)
        prompts += [line for line in input.read_text().splitlines() if line.strip()]
    if not prompts:
        typer.secho("moft generate: give --prompt (repeatable) or --input FILE", fg="red", err=True)
        raise typer.Exit(2)
    if profile is None and len(model.parts) >= 3 and model.parent.name == "finetune":
        profile = model.parent.parent.name  # artifacts/<profile>/finetune/<method>
    cfg = _config(profile, overrides)
    try:
        front = load_front(model, cfg)
        texts = steer(front, prompts, weights)
    except (ValueError, FileNotFoundError, KeyError) as exc:
        typer.secho(f"moft generate: {exc}", fg="red", err=True)
        raise typer.Exit(2) from None
    for p, t in zip(prompts, texts):
        typer.echo(json.dumps({"prompt": p, "weights": weights, "response": t}, ensure_ascii=False))


@app.command()
def champion(profile: Profile = None, overrides: Overrides = None) -> None:
    """Move the `champion` alias to this profile's newest HyperDPO version if its hypervolume,
    re-measured on the current evaluation data, is higher (e.g. after `dvc repro`)."""
    from moft.champion import update_champion

    typer.echo(update_champion(_config(profile, overrides))["reason"])


@config_app.command("show")
def config_show(profile: Profile = None, overrides: Overrides = None) -> None:
    """Print the resolved configuration as JSON."""
    typer.echo(json.dumps(_config(profile, overrides).model_dump(mode="json"), indent=2))


@config_app.command("profiles")
def config_profiles() -> None:
    """List the available profiles."""
    for name in available_profiles():
        typer.echo(f"{name}: {load_config(name).description}")


@config_app.command("reference")
def config_reference() -> None:
    """Print every configuration field with its default and help text (markdown)."""
    typer.echo("| field | default | help |\n|---|---|---|")
    for field, default, text in reference():
        typer.echo(f"| `{field}` | {f'`{default}`' if default else ''} | {text} |")


if __name__ == "__main__":
    app()
