"""moto's server with SageMaker training jobs that really run, started by hand (the README's offline
SageMaker walk-through):

    .venv/bin/python tests/fakes/aws_server.py [--port 5055] [--bucket launcher-demo] [--plain]

It serves moto (S3, SageMaker, CloudWatch Logs, Secrets Manager, ...) on 127.0.0.1:PORT with
``SageMakerFake`` installed (tests/fakes/sagemaker.py: each created training job runs under the real
sagemaker-training toolkit with this interpreter; ``--plain`` leaves moto as it is, where a job is
Completed at once and runs nothing), creates the bucket, prints the environment a shell needs to reach it
(``eval "$(... --print-env)"`` style lines on stdout, then a ready line), and serves until Ctrl-C or
SIGTERM, when it stops every job it runs.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

ROLE_ARN = "arn:aws:iam::123456789012:role/launcher-sagemaker"
SCRIPT_IMAGE = "763104351884.dkr.ecr.us-east-1.amazonaws.com/pytorch-training:2.8.0-gpu-py312"


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--port", type=int, default=5055)
    parser.add_argument("--bucket", default="launcher-demo")
    parser.add_argument("--plain", action="store_true", help="moto as it is: jobs complete at once, run nothing")
    parser.add_argument("--workdir", default=None, help="where the jobs' /opt/ml roots go (default: a temporary folder)")
    args = parser.parse_args(argv)

    import boto3
    from moto.server import ThreadedMotoServer

    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/, so `fakes` imports
    from fakes.sagemaker import SageMakerFake

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=args.port, verbose=False)
    server.start()
    endpoint = f"http://127.0.0.1:{args.port}"
    env = {"AWS_ENDPOINT_URL": endpoint, "AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
           "AWS_DEFAULT_REGION": "us-east-1", "LAUNCHER_SAGEMAKER_ROLE_ARN": ROLE_ARN,
           "LAUNCHER_SAGEMAKER_BUCKET": args.bucket, "LAUNCHER_SAGEMAKER_SCRIPT_IMAGE": SCRIPT_IMAGE}
    import os

    os.environ.update(env)  # the jobs' programs run in this process's environment, as the fake says
    fake = None if args.plain else SageMakerFake(endpoint, workdir=args.workdir).install()
    boto3.client("s3", endpoint_url=endpoint, region_name="us-east-1").create_bucket(Bucket=args.bucket)

    for key, value in env.items():
        print(f"export {key}={value}")
    print(f"# moto{'' if args.plain else ' + SageMakerFake'} ready on {endpoint}; Ctrl-C stops it", flush=True)

    done = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: done.set())
    try:
        done.wait()
    except KeyboardInterrupt:
        pass
    finally:
        if fake is not None:
            fake.close()
        server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
