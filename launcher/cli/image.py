"""``launcher image build|push train|serve``: the images of container/ (``launcher.image``).

The builder's output goes to stderr line by line, so ``--json`` leaves stdout to the result. The result
names the image and, for people, where to put it: ``sagemaker.image_uri`` / ``vertex.image_uri`` for the
training image, ``launcher deploy --option serving_image=...`` for the serving one.
"""

from __future__ import annotations

import typer

from launcher.cli.common import json_option, output

image_app = typer.Typer(help="Build and push the training and serving images (container/Dockerfile.train, .serve).",
                        no_args_is_help=True)

# The options build and push share (typer reads each default; one object serves both commands).
KIND = typer.Argument(..., metavar="KIND", help="train (container/Dockerfile.train) or serve (container/Dockerfile.serve).")
REPOSITORY = typer.Option(None, "--repository",
                          help="Registry/repository to tag with (default: the profile's image_repository; build only: 'launcher').")
BACKEND = typer.Option(None, "--backend", "-b", help="Whose profile repository: sagemaker or vertex (when it names both).")
BUILDER = typer.Option(None, "--builder", envvar="LAUNCHER_IMAGE_BUILDER",
                       help="docker or buildah (env: LAUNCHER_IMAGE_BUILDER; default: docker, else buildah).")
BASE_IMAGE = typer.Option(None, "--base-image", help="The Dockerfile's BASE_IMAGE (default: the Dockerfile's; push: the one built with).")
SOURCE = typer.Option(None, "--source", help="The project's source tree (default: this checkout).")


@image_app.command("build")
def build(kind: str = KIND, repository: str = REPOSITORY, backend: str = BACKEND, builder: str = BUILDER,
          base_image: str = BASE_IMAGE, source: str = SOURCE,
          dry_run: bool = typer.Option(False, "--dry-run", help="Print the tag and the command; build nothing."),
          as_json: bool = json_option()) -> None:
    """Build an image from the assembled context, tagged by its content hash."""
    _run("build", kind, repository, backend, builder, base_image, source, dry_run, as_json)


@image_app.command("push")
def push(kind: str = KIND, repository: str = REPOSITORY, backend: str = BACKEND, builder: str = BUILDER,
         base_image: str = BASE_IMAGE, source: str = SOURCE,
         dry_run: bool = typer.Option(False, "--dry-run", help="Print the commands; log in to nothing, push nothing."),
         as_json: bool = json_option()) -> None:
    """Log in to ECR or Artifact Registry through the SDK and push the image 'build' made from this source."""
    _run("push", kind, repository, backend, builder, base_image, source, dry_run, as_json)


def _run(action: str, kind, repository, backend, builder, base_image, source, dry_run: bool, as_json: bool) -> None:  # noqa: ANN001
    from launcher import image

    plan = getattr(image, action)(kind, repository_uri=repository, backend=backend, builder=builder, base_image=base_image,
                                  source=source, dry_run=dry_run, echo=lambda line: typer.echo(line, err=True))
    verb = {("build", False): "Built", ("build", True): "Would build", ("push", False): "Pushed", ("push", True): "Would push"}
    output(plan, as_json, lambda p: _render(p, verb[action, dry_run], dry_run))


def _render(plan, verb: str, dry_run: bool) -> None:  # noqa: ANN001 - an image.Plan
    if dry_run:
        for command in plan.commands:
            typer.echo("  " + " ".join(command))
    if plan.skipped:
        typer.echo(f"Nothing to push: {plan.skipped}.")
    else:
        typer.echo(f"{verb} {plan.image} ({plan.files} context files, {plan.builder}).")
    if plan.kind == "train":
        typer.echo(f"Use it: sagemaker.image_uri: {plan.image}  (or vertex.image_uri) in the job spec.")
    else:
        typer.echo(f"Use it: launcher deploy JOB_ID --backend sagemaker|vertex --option serving_image={plan.image}")


def register(app: typer.Typer) -> None:
    app.add_typer(image_app, name="image")
