"""Ray job entry point for feature extraction.

    ray job submit --address http://127.0.0.1:8265 --working-dir . -- \
        python pipelines/extract.py --input s3://bucket/ffpp --output s3://bucket/features/ffpp-c23 \
        --layout ffpp --frames 32 --style-weights s3://bucket/weights/psp_ffhq_encode.pt \
        --content-weights s3://bucket/weights/SLOW_8x8_R50.pyth --feature-actors 1,4 --gpus-per-actor 1

Flags: ``raydf extract --help``. S3 endpoint and credentials come from the standard AWS
environment/config (``AWS_ENDPOINT_URL``, instance profiles...), never from arguments.
"""

import sys
from pathlib import Path

# The job's working dir is the repo root: make its raydf win over any installed copy.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from raydf.cli import main  # noqa: E402

if __name__ == "__main__":
    sys.exit(main(["extract", *sys.argv[1:]]))
