"""Careless command lines: counts that would run for years are refused before any work starts."""

import pytest
from PIL import Image

from pipeline import cli
from pipeline.cli import archive as archive_cli
from pipeline.cli import args as cli_args

from ..conftest import natural_image


@pytest.mark.parametrize("flag,most", sorted(cli_args.MAX_COUNTS.items()))
def test_unbounded_iteration_counts_are_refused_in_one_line(tmp_path, capsys, flag, most):
    src = tmp_path / "a.png"
    Image.fromarray(natural_image(16, 16).permute(1, 2, 0).numpy()).save(src)
    out = tmp_path / "out"
    commands = [
        ["compress", str(src), "-o", str(out / "a.oml")],
        ["archive", "--input", str(tmp_path), "--output", str(out)],
        ["eval", str(tmp_path), "-o", str(out), f"--{flag}", "0"],
    ]
    for argv in commands:
        assert cli.main([*argv, f"--{flag}", str(10**9)]) == 2
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and f"--{flag} must be at most {most}" in err, err
    assert archive_cli.job_main("archive", "compress.py", ["--input", str(tmp_path), "--output", str(out), f"--{flag}", str(most + 1)]) == 2
    assert f"--{flag} must be at most {most}" in capsys.readouterr().err
    assert not out.exists()  # nothing started, nothing written
