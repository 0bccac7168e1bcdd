"""The source bundle: the training code as one content-addressed ``.tar.gz``, for clouds that run it.

A managed training job on a prebuilt deep-learning image (SageMaker's script mode, Vertex AI's Python
package mode) needs our code in the container. The bundle holds exactly that:

* ``entrypoints/`` (the training recipe), ``launcher/`` (the pure modules it imports: spec, data,
  errors, facts, state, memory, ...; the package's data files included) and ``monitoring/`` (the recipe
  writes the monitors' ``baseline.json`` with it);
* ``launcher_train.py``, the program the image runs (``python launcher_train.py --key value ...``);
* ``requirements.txt``: what the recipe needs, pinned to the versions this client has installed, so the
  job trains with the libraries it was planned and tested with (torch excepted: the image brings a CUDA
  build of its own).
* ``pyproject.toml``, which makes the same tree a pip-installable package (setuptools; the same pinned
  dependencies) for Vertex AI's ``python_package_spec``, which installs the package and runs
  ``python -m entrypoints.train``. SageMaker's toolkit installs only ``requirements.txt``: it treats a
  folder as a package when it has a ``setup.py``, which the bundle has not.

The archive is deterministic (sorted members, fixed times, owners and modes, no gzip timestamp), so its
SHA-256 names it: a backend uploads ``bundles/<sha256[:16]>.tar.gz`` once, and resubmitting unchanged code
uploads nothing.
"""

from __future__ import annotations

import gzip
import hashlib
import io
import re
import tarfile
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

PROGRAM = "launcher_train.py"
_PROGRAM_TEXT = '''"""Run by the training image (script mode): the launcher's training entrypoint."""
import sys

from entrypoints.train import main

sys.exit(main())
'''
# What the recipe imports at run time besides torch (the image's); pinned to this client's versions.
REQUIREMENTS = ("transformers", "peft", "accelerate", "bitsandbytes", "tokenizers", "safetensors", "datasets",
                "rouge_score", "sacrebleu", "gguf", "pydantic", "PyYAML", "rich", "boto3",
                "google-cloud-secret-manager")


@dataclass(frozen=True)
class Bundle:
    data: bytes
    sha256: str

    @property
    def name(self) -> str:
        return f"{self.sha256[:16]}.tar.gz"


def _sources() -> list[tuple[str, bytes]]:
    import entrypoints
    import launcher
    import monitoring

    files = []
    for package in (launcher, entrypoints, monitoring):
        root = Path(package.__file__).parent
        for path in sorted(root.rglob("*")):
            if path.is_file() and "__pycache__" not in path.parts and path.suffix not in (".pyc", ".pyo"):
                files.append((f"{root.name}/{path.relative_to(root).as_posix()}", path.read_bytes()))
    return files


def requirements() -> str:
    """One ``name==version`` line per package the recipe needs that this client has installed."""
    lines = []
    for name in REQUIREMENTS:
        try:
            version = metadata.version(name)
        except metadata.PackageNotFoundError:
            continue
        lines.append(f"{name}=={re.sub(r'[+].*$', '', version)}")  # local build tags (+cpu) name no release
    return "\n".join(lines) + "\n"


def pyproject(pinned: str) -> str:
    """The bundle's ``pyproject.toml``: the tree as a package named launcher-bundle, its data files kept."""
    from launcher import __version__

    dependencies = "".join(f'    "{line}",\n' for line in pinned.splitlines() if line)
    return (
        '[build-system]\nrequires = ["setuptools>=61"]\nbuild-backend = "setuptools.build_meta"\n\n'
        f'[project]\nname = "launcher-bundle"\nversion = "{__version__}"\nrequires-python = ">=3.11"\n'
        f"dependencies = [\n{dependencies}]\n\n"
        '[tool.setuptools]\npy-modules = ["launcher_train"]\n\n'
        '[tool.setuptools.packages.find]\ninclude = ["launcher*", "entrypoints*", "monitoring*"]\n\n'
        '[tool.setuptools.package-data]\n"*" = ["*.json", "*.yaml"]\n'
    )


def build() -> Bundle:
    """The bundle of the code this client would run (in memory: a few hundred KB)."""
    pinned = requirements()
    members = [*_sources(), (PROGRAM, _PROGRAM_TEXT.encode()), ("requirements.txt", pinned.encode()),
               ("pyproject.toml", pyproject(pinned).encode())]
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.PAX_FORMAT) as tar:
        for name, content in sorted(members):
            info = tarfile.TarInfo(name)
            info.size, info.mtime, info.mode, info.uid, info.gid, info.uname, info.gname = len(content), 0, 0o644, 0, 0, "", ""
            tar.addfile(info, io.BytesIO(content))
    data = gzip.compress(raw.getvalue(), mtime=0)
    return Bundle(data, hashlib.sha256(data).hexdigest())
