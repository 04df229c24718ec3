"""Ray job entry point for a Tune sweep over Ray Train runs.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/tune.py --config infra/configs/train-aws.yaml \
        --features s3://bucket/features/ffpp-c23 --space mixup_restarts --trials 16 \
        --storage s3://bucket/sweeps --name ffpp-mixup --tag dataset=ffpp

Resubmitting the same command (same ``--storage`` and ``--name``) resumes an interrupted
sweep; ``--resume s3://bucket/sweeps/ffpp-mixup`` does the same from the path alone.
Flags: ``raydf tune --help``. S3 and MLflow come from the job's environment
(``AWS_*``/instance profile, ``MLFLOW_TRACKING_URI``), never from arguments.
"""

import sys
from pathlib import Path

# The job's working dir is the repo root: make its raydf (and tune_spaces) win over any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["tune", *sys.argv[1:]]))
