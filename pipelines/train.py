"""Ray job entry point for training the fusion classifier on extraction Parquet.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/train.py --features s3://bucket/features/ffpp-c23 --workers 4 --use-gpu \
        --storage s3://bucket/ray_results --tag dataset=ffpp --test-features celebdf=s3://bucket/features/celebdf

Flags: ``raydf train --help``. MLflow goes to ``--tracking-uri`` or ``MLFLOW_TRACKING_URI``
(an absolute sqlite URI or an ``mlflow server``: a Ray job's working dir is temporary).
"""

import sys
from pathlib import Path

# The job's working dir is the repo root: make its raydf win over any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["train", *sys.argv[1:]]))
