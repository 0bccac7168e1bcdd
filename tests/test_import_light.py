"""`import launcher` and `launcher --help` load neither torch, transformers nor a cloud SDK.

A behaviour test, not a timing test (benchmarks/import_time.py measures the time): each check runs in a
fresh interpreter and lists the heavy modules that ended up in sys.modules, less those a bare interpreter
already has (google-cloud-aiplatform installs a ``*-nspkg.pth`` that creates the empty ``google`` and
``google.cloud`` namespace modules at start-up, in every Python process of the venv).
"""

from __future__ import annotations

import subprocess
import sys

import pytest

HEAVY = ("torch", "transformers", "peft", "datasets", "boto3", "botocore", "google", "starlette", "uvicorn", "prometheus_client")

PROBE = """
import sys
{code}
heavy = sorted(name for name in sys.modules if name.split('.')[0] in {heavy!r})
print(','.join(heavy))
"""


def loaded_after(code: str) -> list[str]:
    result = subprocess.run(
        [sys.executable, "-c", PROBE.format(code=code, heavy=HEAVY)], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr
    return [name for name in result.stdout.strip().splitlines()[-1].split(",") if name]


@pytest.mark.parametrize(
    "code",
    [
        "import launcher",
        "import launcher; launcher.JobSpec; launcher.launch; launcher.attach",
        "import launcher.backends.registry as r; r.get('local')",
        # The one door to the cloud SDKs, and artifacts through it, import them only when a client is made.
        "import launcher.clouds, launcher.artifacts",
        # The fact extractor is reused by monitoring for grounding checks: stdlib only.
        "import launcher.facts as f; f.unsupported('Sold $1,200.', 'Sold: $1,200')",
        # `launcher --help` and a subcommand's help: every command module is imported.
        "from launcher.cli.main import app\ntry:\n    app(['--help'])\nexcept SystemExit:\n    pass",
        "from launcher.cli.main import app\ntry:\n    app(['train', '--help'])\nexcept SystemExit:\n    pass",
        # The serving API and the capture format (monitoring reads it) need no server or cloud library.
        "import launcher, launcher.capture; launcher.deploy; launcher.invoke; launcher.Endpoint",
        "from launcher.cli.main import app\ntry:\n    app(['deploy', '--help'])\nexcept SystemExit:\n    pass",
        # The alert contract and the sinks: SDKs are imported inside the sink that sends, not to parse URIs.
        "import monitoring.alerts, monitoring.sinks as s; s.parse_sinks(['log://', 'pubsub://projects/p/topics/alerts'])",
    ],
)
def test_no_heavy_imports(code):
    baseline = set(loaded_after("pass"))
    assert baseline <= {"google", "google.cloud"}
    assert sorted(set(loaded_after(code)) - baseline) == []
