"""Mutation check: does the test suite catch a broken algorithm, format, resume or decoder?

    python bench/mutants.py                 # every mutant, about 8 minutes on 2 cores
    python bench/mutants.py --only crc-check-disabled tiling-crop-reversed

Each mutant is one small, plausible bug (the first nine are bugs in the algorithm's core, most of
which once passed every test). For each, the tracked files are copied to a temporary folder
(with ``../shared`` linked beside it), the bug is written into the copy, and the tests that
guard that code run there. A mutant is

- ``caught`` when a test fails on an assertion (``assert``, ``pytest.raises`` that did not
  raise, ``pytest.fail``),
- ``crash`` when tests fail only by an unexpected exception or a dead process (a bug found by
  luck, not by a check),
- ``survived`` when the tests pass.

First, the same tests run on an unmutated copy and must pass (otherwise a "catch" means nothing).
Prints one line per mutant and a table; exit status 1 unless every mutant is caught.
"""

from __future__ import annotations

import argparse
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


@dataclass(frozen=True)
class Mutant:
    name: str
    file: str
    old: str
    new: str
    tests: tuple[str, ...]
    what: str
    also: tuple[tuple[str, str], ...] = ()  # further (old, new) edits of the same file

    @property
    def edits(self) -> tuple[tuple[str, str], ...]:
        return ((self.old, self.new), *self.also)


MUTANTS = [
    # the algorithm's core: adaptation, codec, modulator, tiling, the archive's commit order
    Mutant("halve-gamma-by-4", "oml/adapt.py", "gamma = torch.where(better, gamma, gamma / 2)", "gamma = torch.where(better, gamma, gamma / 4)",
           ("tests/codec/test_adapt_reference.py",), "the step size is quartered, not halved, when distortion does not improve"),
    Mutant("gamma-set-shifted", "oml/adapt.py", "GAMMAS = (0.01, 0.1, 1.0, 10.0, 100.0, 1000.0)", "GAMMAS = (0.1, 1.0, 10.0, 100.0, 1000.0, 10000.0)",
           ("tests/codec/test_adapt_reference.py",), "the first step's γ probes shifted by a decade"),
    Mutant("no-float16-when-scoring", "oml/adapt.py", "return lambdas.clamp(LAMBDA_MIN, LAMBDA_MAX).half().float()", "return lambdas.clamp(LAMBDA_MIN, LAMBDA_MAX)",
           ("tests/codec/test_adapt_reference.py",), "λ* candidates scored without the float16 rounding the file applies"),
    Mutant("crc-check-disabled", "oml/codec.py", "    if check != rec.check:\n        raise DesyncError(", "    if False:\n        raise DesyncError(",
           ("tests/codec/test_codec.py", "tests/cli/test_cli.py::test_a_damaged_symbol_stream_is_reported_as_desync", "tests/codec/test_hostile.py::test_damaged_latent_strings_are_always_desync_never_a_crash_or_garbage"),
           "the decoder no longer compares the symbols' check with the stored one"),
    Mutant("boundary-crop-wrong-corner", "oml/codec.py", "return _to_uint8(tiling.crop(x_hat, tile.height, tile.width)[0]).cpu()",
           "return _to_uint8(x_hat[..., x_hat.shape[-2] - tile.height :, x_hat.shape[-1] - tile.width :][0]).cpu()",
           ("tests/codec/test_codec.py",), "boundary tiles cropped from the bottom-right of the padded output"),
    Mutant("marker-before-parquet", "pipeline/archive/encoder.py",
           '        storage.write_json(unit_uri(self.output, unit.index, "done"), result.to_json())  # the commit, always last\n        return result',
           '        storage.write_json(unit_uri(self.output, unit.index, "done"), result.to_json())  # the commit, always last\n'
           '        storage.write_bytes(unit_uri(self.output, unit.index, "tiles"), tiles_file)\n'
           '        storage.write_bytes(unit_uri(self.output, unit.index, "images"), images_file)\n        return result',
           ("tests/archive/test_pipeline_archive.py::test_the_marker_is_written_only_after_its_parquet_files",),
           "the done marker is written before the Parquet files it commits",
           also=(('            storage.write_bytes(unit_uri(self.output, unit.index, "tiles"), tiles_file)\n'
                  '            storage.write_bytes(unit_uri(self.output, unit.index, "images"), images_file)\n        result', "        result"),)),
    Mutant("accept-always", "oml/codec.py", "return _Choice(candidate, recon) if bool(d_new < d_old) else _Choice(lam_t, w.plain)", "return _Choice(candidate, recon)",
           ("tests/codec/test_adapt_reference.py",), "the encoder keeps λ* even when the exact decoder scores it worse"),
    Mutant("quick-step-reversed", "oml/quick.py", "    return er / ee, er * er / ee, fit", "    return -er / ee, er * er / ee, fit",
           ("tests/codec/test_quick.py::test_quick_gains_most_of_what_five_paper_iterations_gain",), "quick adaptation moves λ^{K−2} the wrong way"),
    Mutant("softplus-to-exp", "oml/models/modulator.py", "return F.softplus(self.fc2(F.relu(self.fc1(u))))", "return torch.exp(self.fc2(F.relu(self.fc1(u))))",
           ("tests/models/test_models.py",), "the modulator's scales use exp instead of softplus"),
    Mutant("tiling-crop-reversed", "oml/tiling.py", "return x[..., :height, :width]", "return x[..., x.shape[-2] - height :, x.shape[-1] - width :]",
           ("tests/codec/test_tiling.py",), "tiling's own crop keeps the bottom-right corner"),
    # format
    Mutant("version-unchecked", "oml/codec.py", "    if version not in READABLE_VERSIONS:", "    if False:",
           ("tests/codec/test_codec.py",), "files of an unknown format version are read"),
    Mutant("symbol-check-z-only", "oml/models/latent.py",
           'return zlib.crc32(y_symbols.to(torch.int32).contiguous().numpy().astype("<i4").tobytes(), crc)', "return crc",
           ("tests/codec/test_hostile.py::test_damaged_latent_strings_are_always_desync_never_a_crash_or_garbage",),
           "the symbol check covers z only, not y"),
    Mutant("exact-weights-rounded-coarser", "oml/models/exact.py", "WEIGHT_BITS = 15", "WEIGHT_BITS = 6",
           ("tests/codec/test_exact.py",), "the fixed-point hyper-decoder keeps 6-bit weights"),
    # resume and commit
    Mutant("marker-hash-ignored", "pipeline/archive/layout.py",
           "        return data is not None and len(data) == size and schema.sha256(data) == digest", "        return data is not None",
           ("tests/archive/test_pipeline_archive.py::test_damaged_units_are_named_by_decompress_and_repaired_by_compress",),
           "a marker no longer checks the size and hash of its Parquet files"),
    Mutant("plan-change-accepted", "pipeline/archive/plan.py", "    if not changed:\n        return", "    if True:\n        return",
           ("tests/archive/test_pipeline_archive.py::test_a_rerun_with_other_settings_or_inputs_is_refused",),
           "a re-run with other settings appends to the archive"),
    # decompress
    Mutant("unsafe-paths-allowed", "pipeline/storage.py", '        raise ValueError(f"unsafe path {path!r}: not a plain relative path")', "        pass",
           ("tests/archive/test_pipeline_storage.py", "tests/archive/test_pipeline_archive.py::test_rows_cannot_place_files_or_make_the_decoder_fetch"),
           "archive rows may place files anywhere"),
    Mutant("record-sha256-unchecked", "pipeline/archive/schema.py", 'if sha256(codec.pack_tile(record_of(t, header))) != hex_of(t["record_sha256"]):', "if False:",
           ("tests/archive/test_pipeline_archive.py::test_verify_reports_damaged_records_and_changed_sources",),
           "a tile's coded record is decoded without checking its recorded hash"),
    Mutant("output-names-collide", "pipeline/walk.py", "        while name in taken:", "        while False:",
           ("tests/archive/test_pipeline_archive.py::test_output_names_never_collide", "tests/cli/test_cli.py::test_colliding_names_in_a_folder_get_distinct_outputs_both_ways"),
           "restored names are no longer made distinct"),
    # metadata carried verbatim
    Mutant("exif-dropped-on-restore", "oml/metadata.py", 'exif.append(png_chunk(b"eXIf", upright_exif(data)))', "pass",
           ("tests/codec/test_metadata.py::test_a_restored_png_carries_the_same_exif_icc_xmp_and_text",), "a restored PNG loses the source's EXIF"),
    Mutant("exif-orientation-kept", "oml/metadata.py", 'png_chunk(b"eXIf", upright_exif(data))', 'png_chunk(b"eXIf", data)',
           ("tests/codec/test_metadata.py::test_a_restored_png_carries_the_same_exif_icc_xmp_and_text",), "restored upright pixels keep the source's rotation tag"),
    # meta-training
    Mutant("maml-inner-ascent", "oml/meta.py", "adapted = {name: p - inner_lr * g", "adapted = {name: p + inner_lr * g",
           ("tests/models/test_meta.py",), "the MAML inner step climbs the support loss"),
    Mutant("meta-second-order-dropped", "oml/meta.py", "return maml_losses(synthesis, psi, task, inner_lr, second_order=mode is MetaMode.MAML2)",
           "return maml_losses(synthesis, psi, task, inner_lr, second_order=False)",
           ("tests/models/test_meta.py",), "second-order MAML silently runs first-order"),
]


def copy_tree(dest: Path) -> None:
    """The tracked files (as in the working tree), with ../shared linked beside the copy."""
    listed = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.decode().split("\0")
    for rel in filter(None, listed):
        src = ROOT / rel
        if src.is_file():
            (dest / rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dest / rel)
    shared = ROOT.parent / "shared"
    if shared.exists():
        (dest.parent / "shared").symlink_to(shared)


def mutated(repo: Path, m: Mutant) -> str:
    """The text of ``m.file`` in ``repo`` with the mutant's edits; each must match exactly once."""
    text = (repo / m.file).read_text()
    for old, new in m.edits:
        if text.count(old) != 1:
            raise SystemExit(f"mutant {m.name}: the code it mutates is not found exactly once in {m.file}; update bench/mutants.py")
        text = text.replace(old, new)
    return text


def run_tests(repo: Path, tests: tuple[str, ...]) -> tuple[int, str]:
    env = {**os.environ, "PYTHONDONTWRITEBYTECODE": "1", "CI": os.environ.get("CI", "")}
    run = subprocess.run(
        [sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:cacheprovider", "--tb=short", "-rfE", *tests],
        cwd=repo, capture_output=True, text=True, env=env, timeout=1200,
    )
    return run.returncode, run.stdout + run.stderr


# pytest's "E" lines name what ended each failing test: an assertion (``assert``, its rewritten
# ``AssertionError``, or ``Failed:`` from pytest.raises / pytest.fail), or any other exception.
_E_LINE = re.compile(r"^E\s+(\S.*)$", re.M)
_ASSERTION = re.compile(r"^(assert\b|AssertionError|Failed: |DID NOT RAISE)")


def verdict(code: int, output: str) -> tuple[str, str]:
    if code == 0:
        return "survived", "all its tests passed"
    failed = [line for line in output.splitlines() if line.startswith(("FAILED ", "ERROR "))]
    ends = _E_LINE.findall(output)
    where = failed[0].split(" ", 1)[1].split(" - ")[0] if failed else f"exit {code}"
    hit = next((e for e in ends if _ASSERTION.match(e)), None)
    if hit:
        return "caught", f"{where}: {hit}"[:170]
    return "crash", f"{where}: {ends[0] if ends else output.strip().splitlines()[-1]}"[:170]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--only", nargs="+", metavar="NAME", help="run only these mutants")
    parser.add_argument("--no-baseline", action="store_true", help="skip the run on the unmutated copy")
    args = parser.parse_args(argv)
    chosen = [m for m in MUTANTS if not args.only or m.name in args.only]
    if args.only and len(chosen) != len(args.only):
        parser.error(f"unknown mutant; known: {', '.join(m.name for m in MUTANTS)}")
    results = []
    with tempfile.TemporaryDirectory(prefix="oml-mutants-") as tmp:
        pristine = Path(tmp) / "pristine" / "repo"
        pristine.mkdir(parents=True)
        copy_tree(pristine)
        texts = {m.name: mutated(pristine, m) for m in chosen}  # every mutant must apply to today's code
        if not args.no_baseline:
            tests = tuple(dict.fromkeys(t for m in chosen for t in m.tests))
            code, output = run_tests(pristine, tests)
            if code != 0:
                print(output[-3000:])
                raise SystemExit("the unmutated copy fails these tests: fix that first")
            print(f"baseline: {len(tests)} test selections pass on the unmutated copy", flush=True)
        for m in chosen:
            repo = Path(tmp) / m.name / "repo"
            shutil.copytree(pristine, repo, symlinks=True)
            if (pristine.parent / "shared").exists():
                (repo.parent / "shared").symlink_to((pristine.parent / "shared").resolve())
            (repo / m.file).write_text(texts[m.name])
            start = time.time()
            code, output = run_tests(repo, m.tests)
            status, detail = verdict(code, output)
            results.append((m, status, time.time() - start))
            print(f"{status:8}  {m.name:30} {time.time() - start:5.0f} s  {detail}", flush=True)
            shutil.rmtree(repo.parent)
    print("\n| mutant | the bug | verdict |\n|---|---|---|")
    for m, status, _ in results:
        print(f"| `{m.name}` ({m.file}) | {m.what} | {status} |")
    caught = sum(status == "caught" for _, status, _ in results)
    print(f"\n{caught} of {len(results)} mutants caught by an assertion")
    return 0 if caught == len(results) else 1


if __name__ == "__main__":
    raise SystemExit(main())
