"""gcp-storage-emulator and the Vertex AI fake, started by hand (an offline Vertex AI walk-through):

    .venv/bin/python tests/fakes/gcp_server.py [--storage-port 9023] [--vertex-port 9024] [--bucket launcher-demo]

It serves gcp-storage-emulator (in memory) on 127.0.0.1:STORAGE_PORT and ``VertexFake``
(tests/fakes/vertex.py: JobService and Cloud Logging, each created CustomJob running with this
interpreter against that storage) on 127.0.0.1:VERTEX_PORT, creates the staging bucket, prints the
environment a shell needs to reach them (``export`` lines on stdout, then a ready line), and serves
until Ctrl-C or SIGTERM, when it kills every job it runs.
"""

from __future__ import annotations

import argparse
import os
import signal
import sys
import threading
from pathlib import Path

PROJECT = "test-project"
REGION = "us-central1"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--storage-port", type=int, default=9023)
    parser.add_argument("--vertex-port", type=int, default=9024)
    parser.add_argument("--bucket", default="launcher-demo")
    parser.add_argument("--workdir", default=None, help="where the jobs' folders go (default: a temporary folder)")
    args = parser.parse_args(argv)

    from gcp_storage_emulator.server import create_server
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, so `fakes` imports
    from fakes import gcs
    from fakes.vertex import VertexFake

    gcs.install()  # Cloud Storage's write preconditions, which the emulator ignores

    storage_server = create_server("127.0.0.1", args.storage_port, in_memory=True)
    storage_server.start()
    storage_url = f"http://127.0.0.1:{args.storage_port}"
    os.environ["STORAGE_EMULATOR_HOST"] = storage_url  # the jobs' programs run in this process's environment
    fake = VertexFake(workdir=args.workdir, project=PROJECT)
    address = fake.start(args.vertex_port)
    storage.Client(project=PROJECT, credentials=AnonymousCredentials()).create_bucket(args.bucket)

    env = {"STORAGE_EMULATOR_HOST": storage_url, "VERTEX_EMULATOR_HOST": address, "LOGGING_EMULATOR_HOST": address,
           "LAUNCHER_VERTEX_PROJECT": PROJECT, "LAUNCHER_VERTEX_REGION": REGION, "LAUNCHER_VERTEX_BUCKET": args.bucket}
    for key, value in env.items():
        print(f"export {key}={value}")
    print(f"# gcp-storage-emulator ready on {storage_url}, Vertex AI fake ready on {address}; Ctrl-C stops them", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        fake.close()
        storage_server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
