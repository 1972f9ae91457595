"""Launch Horovod training from a notebook cell: locally, with mpirun, or as a Slurm job.

    job = launch("config.yaml", "runs/a", backend="local", np=2)     # horovodrun --gloo here
    job.status(); job.logs(tail=20); job.metrics(); job.wait()
    job = attach("runs/a")                                            # after a kernel restart
    check_backend("slurm")        # None, or why it cannot start here ("sbatch ... not found on PATH: ...")

    print(launch(cfg, "runs/b", backend="slurm", dry_run=True,
                 slurm=SlurmOptions(nodes=2, gpus_per_node=4, partition="gpu")))

Every launch writes ``run_dir/job.json`` (atomically): backend, job id or pid, the command and
times, which is all a new kernel needs to find the job again. Local and mpirun jobs run under a
small supervisor (``python -m cryovae_nb.launch _supervise``) in their own session: it keeps the
log and records the exit code in ``run_dir/exit.json``, so a job's outcome is known even when the
kernel that started it is gone. Commands are argument lists; values rendered into the Slurm script
are ``shlex.quote``d or, on ``#SBATCH`` lines (which sbatch parses itself, not the shell),
restricted to plain tokens.

    start.py      launch(), start_background()
    job.py        Job (status, logs, metrics, wait, cancel), attach()
    backends.py   the Backend interface, the local and mpirun backends, the BACKENDS registry,
                  check_backend()
    slurm.py      SlurmOptions, the sbatch script, the Slurm backend (sbatch/squeue/sacct/scancel)
    supervise.py  the background supervisor and its process handling
    commands.py   the per-rank training command, horovodrun and mpirun command lines
    __main__.py   ``python -m cryovae_nb.launch`` (``cryovae launch`` is commands/launch.py)

The names of the files a launch writes in the run folder are training/rundir.py's (LAUNCH_FILES).

A new backend is one class in its own module plus an entry in ``BACKENDS`` (see backends.py).
Nothing here imports TensorFlow.
"""
from cryovae_nb.launch.backends import BACKENDS, Backend, LaunchRequest, check_backend
from cryovae_nb.launch.commands import horovodrun_command, mpirun_command, training_command
from cryovae_nb.launch.job import FINISHED, Job, attach
from cryovae_nb.launch.slurm import SlurmOptions, render_slurm_script
from cryovae_nb.launch.start import launch, start_background

__all__ = ["launch", "check_backend", "attach", "start_background", "Job", "FINISHED", "SlurmOptions", "render_slurm_script",
           "training_command", "horovodrun_command", "mpirun_command", "Backend", "LaunchRequest", "BACKENDS"]
