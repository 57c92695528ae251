"""Throughput of `oml archive` across worker nodes: 1 node against 2, each limited to one CPU.

    python bench/nodes.py --json docs/data/nodes.json          # as root (network namespaces)

A cluster of hosts in network namespaces on one computer (:mod:`tests.netcluster`): a Ray head
(no CPUs; the job's driver runs there) and 1, then 2 worker nodes of one Ray CPU each, every worker
node pinned to a core of its own (``taskset``), all reaching a moto S3 endpoint on the bridge. The
same collection (Kodak, ``--copies`` times, from and to S3, default effort, units of ``--unit-tiles``) is archived by each cluster ``--repeats``
times, alternating, each run into a fresh prefix; the rate is tiles per second of the job's coding
(``last_run`` of summary.json: from joining the cluster to the last unit, so each node's worker
start-up and model load are in it), and the ratio is the median of 2 nodes over the median of 1.
Then, as a control, the same images coded by `oml compress` without Ray or S3: one process pinned to
one core against two at once on two cores (the most two nodes can give on that computer).
Needs at least 2 cores; anything else running on them (a training run) makes the ratio lower.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import statistics
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.netcluster import BIN, NetCluster, sweep, unavailable  # noqa: E402

KODAK = ROOT.parent / "shared" / "data" / "kodak"
BUCKET = "oml-bench"


def _cluster(workers: int, server_env: dict[str, str], make_server) -> tuple[NetCluster, object]:
    cluster = NetCluster(workers=workers, cpus=1, cpu_sets=[str(i % os.cpu_count()) for i in range(workers)])
    cluster.make_network()
    server = make_server(cluster.bridge_ip)
    env = {**server_env, "AWS_ENDPOINT_URL": f"http://{cluster.bridge_ip}:{server.get_host_and_port()[1]}"}
    cluster.ray_env.update(env)
    cluster.start_ray()
    return cluster, server


def _archive(cluster: NetCluster, source: str, output: str, effort: str, images: list[Path], copies: int, unit_tiles: int, env: dict[str, str]) -> dict:
    import s3fs

    fs = s3fs.S3FileSystem(key=env["AWS_ACCESS_KEY_ID"], secret=env["AWS_SECRET_ACCESS_KEY"],
                           client_kwargs={"endpoint_url": cluster.ray_env["AWS_ENDPOINT_URL"]}, skip_instance_cache=True)  # fmt: skip
    if not fs.exists(f"{BUCKET}/{source}"):
        fs.mkdir(BUCKET)
        for copy in range(copies):
            for path in images:
                fs.pipe_file(f"{BUCKET}/{source}/{copy}/{path.name}", path.read_bytes())
    argv = [str(BIN / "oml"), "archive", "--input", f"s3://{BUCKET}/{source}", "--output", f"s3://{BUCKET}/{output}",
            "--address", cluster.address, "--effort", effort, "--quality", "3", "--unit-tiles", str(unit_tiles), "--no-progress"]  # fmt: skip
    start = time.perf_counter()
    done = subprocess.run(cluster.command(cluster.head, argv), env=cluster.ray_env, capture_output=True, text=True)
    wall = time.perf_counter() - start
    if done.returncode != 0:
        raise SystemExit(f"archive failed ({done.returncode}): {done.stderr[-2000:]}")
    summary = json.loads(fs.cat_file(f"{BUCKET}/{output}/summary.json"))
    last = summary["last_run"]
    return {"seconds": last["seconds"], "tiles": last["tiles"], "tiles_per_second": last["tiles_per_second"], "driver_wall_s": round(wall, 2)}


def _machine_ceiling(images: list[Path], effort: str, scratch: Path) -> dict:
    """The same coding without Ray or S3: `oml compress` of the images in one process pinned to one
    core, against two processes at once, each pinned to its own core with half of them; the ratio
    is what two cores give two CPU-bound coders there, the most two nodes can give."""
    halves = [images[0::2], images[1::2]]
    for i, half in enumerate(halves):
        folder = scratch / f"half{i}"
        folder.mkdir(parents=True)
        for path in half:
            (folder / path.name).symlink_to(path.resolve())
    whole = scratch / "whole"
    whole.mkdir()
    for path in images:
        (whole / path.name).symlink_to(path.resolve())

    def coders(jobs: list[tuple[str, Path]]) -> float:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        start = time.perf_counter()
        running = [subprocess.Popen(["taskset", "-c", core, str(BIN / "oml"), "compress", str(folder), "-o", str(folder) + "-coded",
                                     "--effort", effort, "--quality", "3"], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
                   for core, folder in jobs]  # fmt: skip
        for p in running:
            if p.wait() != 0:
                raise SystemExit(f"oml compress failed: {p.stderr.read().decode()[-2000:]}")
        return time.perf_counter() - start

    one = coders([("0", whole)])
    two = coders([("0", scratch / "half0"), ("1", scratch / "half1")])
    return {"one_process_s": round(one, 2), "two_processes_s": round(two, 2), "ratio": one / two}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--images", type=int, default=24, help="Kodak images to archive (default 24)")
    p.add_argument("--copies", type=int, default=3, help="times the images are in the collection, under other folders (default 3: 144 tiles)")
    p.add_argument("--unit-tiles", type=int, default=8, help="tiles per unit (default 8: 18 units, so that 1 and 2 nodes both stay busy to the end)")
    p.add_argument("--effort", default="default", choices=("fast", "default", "archival"))
    p.add_argument("--repeats", type=int, default=2, help="runs per cluster, alternating (default 2)")
    p.add_argument("--json", type=Path, help="write the results here")
    p.add_argument("--no-control", action="store_true", help="skip the machine's own two-core ratio (oml compress, no Ray)")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        raise SystemExit(f"bench/nodes.py: {why}")
    from moto.server import ThreadedMotoServer

    sweep()  # what a killed earlier run left

    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    images = sorted(KODAK.glob("*.png"))[: args.images]
    env = {"AWS_ACCESS_KEY_ID": "bench", "AWS_SECRET_ACCESS_KEY": "bench-secret", "AWS_DEFAULT_REGION": "us-east-1", "AWS_EC2_METADATA_DISABLED": "true"}

    def server_at(ip: str) -> ThreadedMotoServer:
        server = ThreadedMotoServer(ip_address=ip, port=0, verbose=False)
        server.start()
        return server

    runs: dict[int, list[dict]] = {1: [], 2: []}
    made = {}
    try:
        for nodes in (1, 2):
            made[nodes] = _cluster(nodes, env, server_at)
        for repeat in range(args.repeats):
            for nodes in (1, 2):
                cluster, _ = made[nodes]
                run = _archive(cluster, "kodak", f"run-{nodes}-{repeat}", args.effort, images, args.copies, args.unit_tiles, env)
                runs[nodes].append(run)
                print(f"{nodes} node{'s' * (nodes > 1)}, run {repeat + 1}: {run['tiles']} tiles in {run['seconds']:.1f} s, {run['tiles_per_second']:.3f} tiles/s", flush=True)
    finally:
        for cluster, server in made.values():
            cluster.close()
            server.stop()
    rate = {n: statistics.median(r["tiles_per_second"] for r in runs[n]) for n in runs}
    control = None
    if not args.no_control:
        import tempfile

        with tempfile.TemporaryDirectory() as scratch:
            control = _machine_ceiling(images, args.effort, Path(scratch))
        print(f"control, without Ray: two pinned coders {control['ratio']:.2f}x one", flush=True)
    result = {
        "command": "python bench/nodes.py " + " ".join(argv if argv is not None else sys.argv[1:]),
        "what": "oml archive of Kodak (copies under other folders) from and to S3 (moto), quality 3, on a namespace cluster: 1 then 2 worker nodes of one pinned CPU each",
        "copies": args.copies,
        "unit_tiles": args.unit_tiles,
        "effort": args.effort,
        "images": len(images),
        "runs": {str(n): runs[n] for n in runs},
        "tiles_per_second": {str(n): rate[n] for n in rate},
        "ratio_2_over_1": rate[2] / rate[1],
        "machine_two_core_ratio": control,
        "cpus": os.cpu_count(),
        "load_average_after": os.getloadavg(),
    }
    print(f"2 nodes / 1 node: {result['ratio_2_over_1']:.2f}x ({rate[1]:.3f} → {rate[2]:.3f} tiles/s)")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
