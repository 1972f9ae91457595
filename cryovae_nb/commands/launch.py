"""``cryovae launch``: Horovod training locally, with mpirun, or as a Slurm job (``cryovae_nb.launch``)."""
from __future__ import annotations

import argparse

from cryovae_nb.argcheck import nonnegative_int, output_dir, positive_int
from cryovae_nb.launch import BACKENDS, SlurmOptions, launch

HELP = "launch Horovod training locally, with mpirun or on Slurm"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    p = parser
    p.add_argument("config", help="training config (JSON/YAML)")
    p.add_argument("--run-dir", required=True, help="output folder (checkpoints, metrics, job.json)")
    p.add_argument("--backend", choices=BACKENDS, default="local")
    p.add_argument("--np", type=positive_int, default=2, help="processes (local / mpirun)")
    p.add_argument("--hosts", help="horovodrun/mpirun host list, e.g. node1:4,node2:4")
    p.add_argument("--nodes", type=positive_int, default=1)
    p.add_argument("--gpus-per-node", type=nonnegative_int, default=4)
    p.add_argument("--cpus-per-task", type=positive_int, default=4)
    p.add_argument("--mem", default="64G")
    p.add_argument("--time", default="24:00:00")
    p.add_argument("--partition")
    p.add_argument("--account")
    p.add_argument("--venv")
    p.add_argument("--conda-env")
    p.add_argument("--module", action="append", default=[], help="module to load (repeatable)")
    p.add_argument("--launcher", choices=("horovodrun", "srun"), default="horovodrun")
    p.add_argument("--dry-run", action="store_true", help="print the script / command only")
    p.add_argument("--wait", action="store_true", help="block until the job ends")


def run(args: argparse.Namespace) -> int:
    output_dir(args.run_dir, "--run-dir")
    slurm = SlurmOptions(nodes=args.nodes, gpus_per_node=args.gpus_per_node,
                         cpus_per_task=args.cpus_per_task, mem=args.mem, time=args.time,
                         partition=args.partition, account=args.account, venv=args.venv,
                         conda_env=args.conda_env, modules=tuple(args.module), launcher=args.launcher)
    out = launch(args.config, args.run_dir, backend=args.backend, np=args.np, hosts=args.hosts,
                 slurm=slurm, dry_run=args.dry_run)
    if isinstance(out, str):
        print(out)
        return 0
    print(f"launched {out!r}")
    if args.wait:
        out.wait()
        print(f"finished: {out.status()}")
    return 0
