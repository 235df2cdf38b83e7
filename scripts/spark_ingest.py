"""spark-submit driver for `dpflows ingest --engine spark` (spark-submit runs a file, not `-m`).

    spark-submit --master yarn --deploy-mode client scripts/spark_ingest.py \
        s3a://bucket/events/2024-03/ --cells cells.csv --out /srv/dpflows/data/datasets/march

The arguments are those of `dpflows ingest`; --engine spark is implied. The session comes from
spark-submit (master, executors, s3a credentials); dpflows sets none of them.
"""

import sys

from dpflows.cli import main

if __name__ == "__main__":
    sys.exit(main(["ingest", "--engine", "spark", *sys.argv[1:]]))
