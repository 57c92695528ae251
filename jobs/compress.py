"""Archive an image collection on Ray: `oml archive` under the name `ray job submit` runs.

    python jobs/compress.py --input photos/ --output archive/ --quality 3 --steps 20
    ray job submit --working-dir . -- python jobs/compress.py --input s3://bucket/photos --output s3://bucket/archive

The flags, their help and the run are pipeline/cli/archive.py's, shared with `oml archive`.
"""

from __future__ import annotations

from pipeline.cli.archive import archive_parser, job_main  # light: no torch, no Ray


def build_parser():
    return archive_parser("compress.py")


def main(argv=None) -> int:
    return job_main("archive", "compress", argv)


if __name__ == "__main__":
    raise SystemExit(main())
