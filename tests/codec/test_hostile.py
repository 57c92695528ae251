"""Forged .oml files with valid checksums, through the command a user runs: each is a one-line
error, and the process stays small (headers are bounded before anything is allocated)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from oml import codec
from oml.models.zoo import load_model

from ..conftest import natural_image

ROOT = Path(__file__).resolve().parents[2]
FORGERIES = {
    "huge-image": dict(height=60000, width=60000),
    "huge-tile-count": dict(height=4000, width=4000, num_tiles=64),
    # 65 535² tiles of 64 px: a consistent header whose grid alone, built as a list, took >12 GB
    "astronomical-grid": dict(height=65535 * 64, width=65535 * 64, tile=64, num_tiles=65535**2),
    "zero-size": dict(height=0, width=0, num_tiles=0),
    "no-metric-sets": dict(metrics=()),
    "oversized-tile": dict(tile=65472),
    "zero-modulators": dict(num_lambdas=0),
}


@pytest.fixture(scope="module")
def forged(tmp_path_factory):
    folder = tmp_path_factory.mktemp("forged")
    model = load_model("oml-default", 1)
    header, records = codec.read(codec.encode(model, natural_image(64, 64), quality=1).data)
    paths = []
    for name, change in FORGERIES.items():
        path = folder / f"{name}.oml"
        path.write_bytes(codec.write(header.__class__(**{**header.__dict__, **change}), records))
        paths.append(path)
    for name, z_shape in {"zero-z": (0, 0), "huge-z": (65535, 65535)}.items():
        path = folder / f"{name}.oml"
        path.write_bytes(codec.write(header, [records[0]._replace(z_shape=z_shape)]))
        paths.append(path)
    return folder, paths


@pytest.mark.parametrize("command", ["info", "decompress"])
def test_forged_headers_are_one_line_errors_in_bounded_memory(forged, command):
    folder, paths = forged
    extra = ["-o", str(folder / "out")] if command == "decompress" else []
    argv = ["oml", command, *map(str, paths), *extra]
    script = (  # the CLI, then its own peak resident memory on the last line
        "import runpy, sys\n"
        f"sys.argv = {argv!r}\n"
        "try:\n    runpy.run_module('pipeline.cli', run_name='__main__')\n"
        # VmHWM, not ru_maxrss: ru_maxrss survives exec, so a child of a large test process would
        # report the test process's size instead of its own
        "finally:\n    print('peak-kib', [l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')][0], file=sys.stderr)\n"
    )
    run = subprocess.run([sys.executable, "-c", script], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    errors = [line for line in run.stderr.splitlines() if line.startswith("error: ")]
    assert len(errors) == len(paths) and all("damaged" in line for line in errors), run.stderr
    peak_mib = int(run.stderr.rsplit("peak-kib ", 1)[1].split()[0]) / 1024
    assert peak_mib < 1500, f"{peak_mib:.0f} MiB"  # torch and the model alone are about 500 MiB
    assert not (folder / "out").exists()


def test_damaged_latent_strings_are_always_desync_never_a_crash_or_garbage():
    """120 random damages to a tile's y or z string (bytes overwritten, cut short, replaced),
    each with a valid file checksum: every one is reported as a desync (the range decoder reads a
    zero-padded copy, so none reads foreign memory), none decodes silently."""
    import random

    model = load_model("oml-default", 3)
    header, records = codec.read(codec.encode(model, natural_image(256, 256), quality=3).data)
    rng = random.Random(0)
    outcomes = []
    for _ in range(120):
        which = rng.randrange(2)
        damaged = bytearray(records[0].strings[which])
        mode = rng.randrange(3)
        if mode == 0:
            for _ in range(rng.randint(1, 8)):
                damaged[rng.randrange(len(damaged))] = rng.randrange(256)
        elif mode == 1:
            damaged = damaged[: rng.randrange(len(damaged))]
        else:
            damaged = bytearray(rng.randrange(256) for _ in range(rng.randint(0, 64)))
        if bytes(damaged) == records[0].strings[which]:
            continue
        strings = list(records[0].strings)
        strings[which] = bytes(damaged)
        try:
            codec.decode(model, codec.write(header, [records[0]._replace(strings=strings)]))
            outcomes.append("decoded")
        except codec.DesyncError:
            outcomes.append("desync")
        except codec.CodecError as exc:  # any other refusal (a non-finite decoder output…) is a miss of the symbol check
            outcomes.append(f"other error: {exc}")
    assert len(outcomes) > 100 and set(outcomes) == {"desync"}, sorted(set(outcomes))[:3]


@pytest.mark.slow
def test_the_probe_battery_finds_no_failure():
    """bench/probes.py (the table in docs/RESULTS.md): every hostile or careless input through the
    CLI and the Ray jobs is a clean error, a manifest entry or a correct result."""
    run = subprocess.run([sys.executable, "bench/probes.py"], cwd=ROOT, capture_output=True, text=True, timeout=600)
    failures = [line for line in run.stdout.splitlines() if line.startswith("FAIL")]
    assert run.returncode == 0 and not failures, failures or run.stderr[-2000:]
    assert "| **all** | **" in run.stdout
