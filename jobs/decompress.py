"""Restore images from an archive made by jobs/compress.py: `oml restore` under the name `ray job submit` runs.

    python jobs/decompress.py --input archive/ --output restored/
    python jobs/decompress.py --input s3://bucket/archive --output restored/ --select 'holidays/*.jpg' --verify --sources s3://bucket/photos
    python jobs/decompress.py --input archive/ --output window/ --select scans/big.tif --region 4096,2048,512,512

The flags, their help and the run are pipeline/cli/archive.py's, shared with `oml restore`.
"""

from __future__ import annotations

from pipeline.cli.archive import job_main, restore_parser  # light: no torch, no Ray


def build_parser():
    return restore_parser("decompress.py")


def main(argv=None) -> int:
    return job_main("restore", "decompress", argv)


if __name__ == "__main__":
    raise SystemExit(main())
