"""Container images: the training and serving images of ``container/``, built and pushed for the
custom-image mode (``sagemaker.image_uri``, ``vertex.image_uri``, ``launcher deploy --option serving_image``).

    launcher image build train|serve [--repository URI] [--builder docker|buildah] [--base-image IMAGE]
    launcher image push  train|serve [--repository URI]

Most users need neither: the default training path is the source bundle (``launcher.bundle``), which
AWS's or Google's prebuilt PyTorch image runs. An image is for a job that needs system packages or a
fixed environment, for network-isolated jobs (no pip at start-up), and for serving, which always runs
an image.

* **The context** is assembled, not taken from the working tree: exactly the paths in ``CONTEXT`` (the
  repository root's ``.dockerignore`` lets the same ones in, for a plain ``docker build .``; a test keeps
  the two equal), without ``__pycache__`` and ``*.pyc``, copied in sorted order into a temporary folder
  with every modification time set to zero.
* **The tag is the content hash**: ``<kind>-<12 hex>`` of every context file's path, executable bit and
  content, the Dockerfile's kind and the base image. The same source builds the same tag, so ``push``
  finds the tag ``build`` made without being told it, and the registry's immutable tags (terraform makes
  both repositories so) never need to move. An ECR tag that is already there is not pushed again.
* **The builder** is ``docker``, or ``buildah`` where that is what the machine has (``--builder`` or
  ``LAUNCHER_IMAGE_BUILDER`` to choose); with neither on PATH the command fails in one line, exit 2.
  Images are built for ``linux/amd64``, what SageMaker and Vertex AI run. buildah reads its own
  ``BUILDAH_ISOLATION`` (``chroot`` inside an unprivileged container).
* **Login** goes through the SDKs, in ``launcher.clouds``: ECR's ``GetAuthorizationToken`` (boto3) and a
  Google OAuth access token (google-auth) for Artifact Registry, handed to ``<builder> login
  --password-stdin`` (never on the command line). A registry of neither kind is used as the builder is
  already logged in to it.
* **The repository**: ``--repository``, else the profile's ``image_repository`` (``launcher config
  from-terraform``), else, for ``build`` only, the local name ``launcher``.
"""

from __future__ import annotations

import base64
import hashlib
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from launcher.errors import BackendError, NotFoundError, UserInputError, did_you_mean

KINDS = {"train": "container/Dockerfile.train", "serve": "container/Dockerfile.serve"}
CONTEXT = ("pyproject.toml", "README.md", "constraints.txt", "container", "launcher", "entrypoints", "monitoring")
BUILDERS = ("docker", "buildah")
PLATFORM = "linux/amd64"
LOCAL_REPOSITORY = "launcher"
_SKIP_PARTS = {"__pycache__"}
_SKIP_SUFFIXES = (".pyc", ".pyo")
_ECR = re.compile(r"^(?P<account>\d{12})\.dkr\.ecr(?:-fips)?\.(?P<region>[a-z0-9-]+)\.amazonaws\.com(?:\.cn)?$")
_ARTIFACT_REGISTRY = re.compile(r"^(?P<region>[a-z0-9-]+)-docker\.pkg\.dev$")


@dataclass(frozen=True)
class Context:
    """The files an image is built from: the source root and the sorted relative paths; ``digest``
    hashes their paths, executable bits and contents."""

    root: Path
    files: tuple[str, ...]
    digest: str


@dataclass
class Plan:
    """What ``build`` or ``push`` runs: the image, the builder and its commands (secrets never in them)."""

    kind: str
    image: str
    builder: str
    commands: list[list[str]] = field(default_factory=list)
    files: int = 0
    skipped: str = ""  # why nothing was pushed (the tag is in the registry already)

    @property
    def tag(self) -> str:
        return self.image.rsplit(":", 1)[1]

    def to_dict(self) -> dict:
        return {"kind": self.kind, "image": self.image, "tag": self.tag, "builder": self.builder,
                "commands": self.commands, "context_files": self.files, **({"skipped": self.skipped} if self.skipped else {})}


def check_kind(kind: str) -> str:
    if kind not in KINDS:
        raise UserInputError(f"unknown image kind '{kind}'.{did_you_mean(kind, KINDS)} To fix: use train or serve")
    return kind


def source_root(explicit: str | Path | None = None) -> Path:
    """The project's source tree (it holds container/): ``explicit``, else the checkout this launcher
    runs from, else the current folder."""
    import launcher

    candidates = [Path(explicit)] if explicit else [Path(launcher.__file__).resolve().parents[1], Path.cwd()]
    for root in candidates:
        if (root / KINDS["train"]).is_file():
            return root.resolve()
    where = candidates[0]
    raise NotFoundError(f"no {KINDS['train']} under {where}: images are built from the project's source tree. "
                        "To fix: run it in a clone of the repository, or pass --source DIR")


def context(root: Path) -> Context:
    """The build context under ``root``: the ``CONTEXT`` paths, sorted, without caches."""
    files = []
    for entry in CONTEXT:
        path = root / entry
        if path.is_file():
            files.append(entry)
        elif path.is_dir():
            for item in sorted(path.rglob("*")):
                relative = item.relative_to(root)
                if item.is_file() and not _SKIP_PARTS & set(relative.parts) and item.suffix not in _SKIP_SUFFIXES:
                    files.append(relative.as_posix())
        else:
            raise NotFoundError(f"the image context needs {path}, which does not exist. To fix: run it in a full clone of the repository")
    files.sort()
    digest = hashlib.sha256()
    for name in files:
        path = root / name
        digest.update(f"{name}\0{int(os.access(path, os.X_OK))}\0".encode())
        digest.update(hashlib.sha256(path.read_bytes()).digest())
    return Context(root, tuple(files), digest.hexdigest())


def tag(kind: str, ctx: Context, base_image: str | None = None) -> str:
    """``<kind>-<12 hex>``: the content hash of the context, the kind and the base image."""
    digest = hashlib.sha256(f"{ctx.digest}\0{kind}\0{base_image or ''}".encode()).hexdigest()
    return f"{kind}-{digest[:12]}"


def assemble(ctx: Context, into: Path) -> None:
    """Copy the context into ``into``, in sorted order, every modification time zero."""
    for name in ctx.files:
        target = into / name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(ctx.root / name, target)
        os.utime(target, (0, 0))
    for folder in sorted((p for p in into.rglob("*") if p.is_dir()), reverse=True):  # deepest first
        os.utime(folder, (0, 0))


def find_builder(choice: str | None = None) -> tuple[str, str]:
    """(name, path) of the builder: ``choice`` or ``LAUNCHER_IMAGE_BUILDER``, else docker, else buildah."""
    choice = choice or os.environ.get("LAUNCHER_IMAGE_BUILDER") or "auto"
    if choice not in (*BUILDERS, "auto"):
        raise UserInputError(f"unknown image builder '{choice}'.{did_you_mean(choice, BUILDERS)} "
                             "To fix: --builder docker or --builder buildah (or unset LAUNCHER_IMAGE_BUILDER)")
    for name in BUILDERS if choice == "auto" else (choice,):
        found = shutil.which(name)
        if found:
            return name, found
    wanted = "neither docker nor buildah is" if choice == "auto" else f"{choice} is not"
    raise UserInputError(f"no image builder: {wanted} on PATH. To fix: install Docker (docs.docker.com/engine/install) "
                         "or buildah (apt-get install buildah), or train with the source bundle, which needs no image "
                         "(leave sagemaker.image_uri / vertex.image_uri unset)")


def build_command(builder: str, dockerfile: str, image: str, context_dir: Path | str, base_image: str | None) -> list[str]:
    command = [builder, "build", "--file", f"{context_dir}/{dockerfile}", "--tag", image, "--platform", PLATFORM]
    if base_image:
        command += ["--build-arg", f"BASE_IMAGE={base_image}"]
    revision = image.rsplit(":", 1)[1]
    return [*command, "--label", f"org.opencontainers.image.revision={revision}", str(context_dir)]


def repository(explicit: str | None, backend: str | None, *, for_push: bool) -> str:
    """The repository to tag with: ``explicit``, else the profile's, else (build only) ``launcher``."""
    if explicit:
        return explicit.rstrip("/")
    from launcher import profile

    loaded = profile.load()
    sections = {name: getattr(loaded, name) for name in ("sagemaker", "vertex") if backend in (None, name)}
    found = {name: section.image_repository for name, section in sections.items() if section and section.image_repository}
    if len(found) == 1:
        return next(iter(found.values()))
    if len(found) > 1:
        raise UserInputError(f"the profile names a repository for both {' and '.join(found)}. To fix: pass --backend sagemaker or vertex")
    if not for_push:
        return LOCAL_REPOSITORY
    raise UserInputError("no repository to push to. To fix: pass --repository URI, or write the profile with "
                         "'launcher config from-terraform terraform/aws' (or terraform/gcp)")


def run(command: list[str], stdin: str | None = None, echo: Callable[[str], None] | None = None) -> None:
    """Run a builder command, its output line by line to ``echo``; BackendError naming its last line on failure."""
    process = subprocess.Popen(command, stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
                               stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    if stdin is not None:
        process.stdin.write(stdin)
        process.stdin.close()
    last = ""
    for line in process.stdout:
        if line.strip():
            last = line.strip()
        if echo is not None:
            echo(line.rstrip("\n"))
    code = process.wait()
    if code != 0:
        shown = f"{Path(command[0]).name} {command[1]}"
        daemon = " (start the Docker daemon, or use --builder buildah)" if "docker daemon" in last.lower() else ""
        raise BackendError(f"{shown} failed (exit {code}), its last line: {last or '(no output)'!r}. "
                           f"To fix: correct what it names{daemon}, then run it again")


def _plan(kind: str, repository_uri: str | None, backend: str | None, builder: str | None, base_image: str | None,
          source: str | Path | None, *, for_push: bool) -> tuple[Context, Plan, str]:
    """The context, the plan (image name with its content tag, builder) and the builder's path."""
    check_kind(kind)
    ctx = context(source_root(source))
    name, executable = find_builder(builder)
    image = f"{repository(repository_uri, backend, for_push=for_push)}:{tag(kind, ctx, base_image)}"
    return ctx, Plan(kind, image, name, files=len(ctx.files)), executable


def build(kind: str, *, repository_uri: str | None = None, backend: str | None = None, builder: str | None = None,
          base_image: str | None = None, source: str | Path | None = None, dry_run: bool = False,
          echo: Callable[[str], None] | None = None) -> Plan:
    """Build the ``kind`` image from an assembled context, tagged ``REPOSITORY:<kind>-<hash>``."""
    ctx, plan, executable = _plan(kind, repository_uri, backend, builder, base_image, source, for_push=False)
    image, name = plan.image, plan.builder
    if dry_run:
        plan.commands = [build_command(name, KINDS[kind], image, "CONTEXT", base_image)]
        return plan
    with tempfile.TemporaryDirectory(prefix="launcher-image-") as folder:
        assemble(ctx, Path(folder))
        command = build_command(name, KINDS[kind], image, folder, base_image)
        plan.commands = [command]
        run([executable, *command[1:]], echo=echo)
    return plan


def push(kind: str, *, repository_uri: str | None = None, backend: str | None = None, builder: str | None = None,
         base_image: str | None = None, source: str | Path | None = None, dry_run: bool = False,
         echo: Callable[[str], None] | None = None) -> Plan:
    """Log in to the repository's registry through its SDK and push the ``kind`` image ``build`` made
    from this source (the same content hash names it)."""
    _, plan, executable = _plan(kind, repository_uri, backend, builder, base_image, source, for_push=True)
    image, name = plan.image, plan.builder
    host = image.split("/", 1)[0]
    if "/" not in image or "." not in host and ":" not in host:
        raise UserInputError(f"'{image.rsplit(':', 1)[0]}' names no registry to push to. To fix: pass --repository "
                             "REGISTRY/REPOSITORY (the ecr_repository_url or artifact_registry_repository terraform output)")
    if not dry_run and _already_pushed(image):
        plan.skipped = f"{image} is in the registry already (tags are content hashes: the same source, the same image)"
        return plan
    login = registry_login(host) if not dry_run else _login_user(host)
    push_command = [name, "push", image]
    if login is not None:
        user, password = login
        plan.commands.append([name, "login", "--username", user, "--password-stdin", host])
        if not dry_run:
            run([executable, *plan.commands[-1][1:]], stdin=password, echo=echo)
    plan.commands.append(push_command)
    if not dry_run:
        run([executable, *push_command[1:]], echo=echo)
    return plan


def _login_user(host: str) -> tuple[str, str] | None:
    if _ECR.match(host):
        return "AWS", ""
    if _ARTIFACT_REGISTRY.match(host):
        return "oauth2accesstoken", ""
    return None


def registry_login(host: str) -> tuple[str, str] | None:
    """(user, password) for ``<builder> login`` to ``host``: ECR through boto3, Artifact Registry through
    google-auth; None for another registry (the builder's own login is used)."""
    from launcher import clouds

    ecr = _ECR.match(host)
    if ecr:
        with clouds.aws_errors(f"ECR registry {host}", "ecr:GetAuthorizationToken"):
            answer = clouds.aws_client("ecr", ecr["region"]).get_authorization_token(registryIds=[ecr["account"]])
        user, _, password = base64.b64decode(answer["authorizationData"][0]["authorizationToken"]).decode().partition(":")
        return user, password
    if _ARTIFACT_REGISTRY.match(host):
        return "oauth2accesstoken", clouds.google_access_token(f"Artifact Registry {host}")
    return None


def _already_pushed(image: str) -> bool:
    """Whether an ECR repository holds the tag (ECR's tags are immutable: a second push is refused)."""
    repository_uri, image_tag = image.rsplit(":", 1)
    host, _, name = repository_uri.partition("/")
    ecr = _ECR.match(host)
    if not ecr:
        return False
    from launcher import clouds

    client = clouds.aws_client("ecr", ecr["region"])
    with clouds.aws_errors(f"ECR repository {repository_uri}", "ecr:DescribeImages",
                           missing="create it with terraform/aws, or correct --repository"):
        try:
            client.describe_images(registryId=ecr["account"], repositoryName=name, imageIds=[{"imageTag": image_tag}])
        except client.exceptions.ImageNotFoundException:
            return False
    return True
