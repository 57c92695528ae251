"""How long `oml archive` takes to finish when a worker node is cut off from the network mid-job,
for Ray's gRPC keepalive settings.

    python bench/node_loss.py --json docs/data/node_loss.json      # as root (network namespaces)

A cluster of hosts in network namespaces (:mod:`tests.netcluster`: a head and two worker nodes of 2
CPUs, a moto S3 endpoint on the bridge); 24 synthetic images of one tile each, from and to S3 (a
fresh bucket per run), fast effort, one tile a unit. Once a unit is being coded on the second worker
node, its link is taken down; the time is from the cut to the job's exit (which must be 0). A call
in flight to the silent node ends only when gRPC's keepalive ping goes unanswered: each setting is
``TIME_MS/TIMEOUT_MS`` for ``RAY_grpc_client_keepalive_time_ms`` and ``..._timeout_ms`` on every
node, ``ray`` for Ray's own (300 000/120 000). Health checks are the test cluster's short ones.
"""

from __future__ import annotations

import argparse
import json
import logging
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from tests.netcluster import BIN, TIMEOUTS, NetCluster, sweep, unavailable  # noqa: E402

KEEPALIVE = ("RAY_grpc_client_keepalive_time_ms", "RAY_grpc_client_keepalive_timeout_ms")


def _one(setting: str, images: int) -> dict:
    import secrets

    import s3fs
    from moto.server import ThreadedMotoServer

    from oml.imageio import encode_png
    from tests.conftest import natural_image

    cluster = NetCluster(workers=2, cpus=2)
    bucket = f"oml-bench-{secrets.token_hex(4)}"  # moto keeps its buckets for the whole process: each run a fresh one
    server = None
    try:
        cluster.make_network()
        server = ThreadedMotoServer(ip_address=cluster.bridge_ip, port=0, verbose=False)
        server.start()
        endpoint = f"http://{cluster.bridge_ip}:{server.get_host_and_port()[1]}"
        cluster.ray_env.update(AWS_ACCESS_KEY_ID="bench", AWS_SECRET_ACCESS_KEY="bench-secret", AWS_DEFAULT_REGION="us-east-1",
                               AWS_ENDPOINT_URL=endpoint, AWS_EC2_METADATA_DISABLED="true")  # fmt: skip
        for key in KEEPALIVE:
            cluster.ray_env.pop(key, None)
        if setting != "ray":
            cluster.ray_env.update(zip(KEEPALIVE, setting.split("/")))
        cluster.start_ray()
        fs = s3fs.S3FileSystem(key="bench", secret="bench-secret", client_kwargs={"endpoint_url": endpoint}, skip_instance_cache=True)
        fs.mkdir(bucket)
        for i in range(images):
            fs.pipe_file(f"{bucket}/in/{i:02d}.png", encode_png(natural_image(192, 224, seed=100 + i)))
        argv = [str(BIN / "oml"), "archive", "--input", f"s3://{bucket}/in", "--output", f"s3://{bucket}/out", "--address", cluster.address,
                "--quality", "1", "--effort", "fast", "--unit-tiles", "1", "--no-progress"]  # fmt: skip
        job = subprocess.Popen(cluster.command(cluster.head, argv), env=cluster.ray_env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
        victim = cluster.hosts["w2"]
        try:
            cluster.wait_busy(victim, until=job)
        except RuntimeError as error:
            job.kill()
            raise SystemExit(f"{error} ({setting}); the job said: {job.communicate()[1][-2000:]}") from None
        cut = time.perf_counter()
        cluster.cut(victim)
        err = job.communicate()[1]
        seconds = time.perf_counter() - cut
        if job.returncode != 0:
            raise SystemExit(f"archive failed ({job.returncode}) with {setting}: {err[-2000:]}")
        summary = json.loads(fs.cat_file(f"{bucket}/out/summary.json"))
        return {"keepalive": setting, "seconds_after_cut": round(seconds, 1), "archived": summary["archived"], "images": summary["images"]}
    finally:
        cluster.close()
        if server is not None:
            server.stop()


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--settings", nargs="+", default=["ray", "30000/10000", f"{TIMEOUTS[KEEPALIVE[0]]}/{TIMEOUTS[KEEPALIVE[1]]}"],
                   help="keepalive TIME_MS/TIMEOUT_MS per run, or 'ray' for Ray's defaults (default: ray, 30000/10000, the test cluster's)")  # fmt: skip
    p.add_argument("--images", type=int, default=24)
    p.add_argument("--json", type=Path, help="write the results here")
    args = p.parse_args(argv)
    why = unavailable()
    if why:
        raise SystemExit(f"bench/node_loss.py: {why}")
    logging.getLogger("werkzeug").setLevel(logging.WARNING)
    sweep()  # what a killed earlier run left
    runs = []
    for setting in args.settings:
        runs.append(_one(setting, args.images))
        print(f"keepalive {setting}: the job ended {runs[-1]['seconds_after_cut']} s after the cut, {runs[-1]['archived']} of {runs[-1]['images']} archived", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"command": "python bench/node_loss.py " + " ".join(argv if argv is not None else sys.argv[1:]), "runs": runs}, indent=1) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
