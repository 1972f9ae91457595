"""The files a launch leaves in the run folder, beside the training's own.

job.json is the job's record (backend, job id or pid, command, times): all a new kernel needs to
find the job again. exit.json holds the exit code, written by whatever outlives the job's ranks
(the supervisor, or the Slurm script's EXIT trap), so the outcome is known without the kernel that
started it. launch.log is the supervised job's combined output.
"""
from __future__ import annotations

JOB_FILE = "job.json"
EXIT_FILE = "exit.json"
LOG_FILE = "launch.log"
CONFIG_NAME = "launch_config.json"  # not config.json: the Trainer writes its resolved config there
