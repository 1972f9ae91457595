"""Training monitor: live log-scaled loss curves (train vs test), the KL of each latent dimension
on the held-out images (how much of the latent is used), the latest sample grid, and for a run
directory the job's queue state (PENDING, RUNNING, ... from the launcher's job.json), step of
max_steps, images/s, ETA and the newest decoded volume.

Fed either in-process -- the Trainer calls ``on_metrics(dict)`` and ``on_samples(images,
projections, step)`` -- or from a run directory written by any process (a Horovod job, a Slurm
run): ``run_dir/metrics.jsonl`` (one JSON record a line: step, split, recon, kl, averaging,
total, ...; test records also kl_per_dim, active_dims and, when the latent carries no
information, latent_collapsed), ``run_dir/samples/step_XXXXXXX.png`` and the volumes beside it
(``samples/step_XXXXXXX/particle_*.mrc``) and, where the run was started by ``cryovae_nb.launch``,
``run_dir/job.json`` (its max_steps from the job's command and config file; else from
``run_dir/config.json``); read by ``refresh()`` or a background poll.
"""
from __future__ import annotations

import html
import os
import threading
from collections import defaultdict
from pathlib import Path
from typing import Sequence

import ipywidgets as W
import numpy as np
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from cryovae_nb.config import load_config
from cryovae_nb.errors import CryoVAEError, InputError, LaunchError
from cryovae_nb.io import read_volume
from cryovae_nb.launch import Job, attach
from cryovae_nb.training.config import TrainConfig
from cryovae_nb.training.rundir import CONFIG_FILE, JOB_FILE, RunFolder
from cryovae_nb.widgets.images import comparison_png, normalise01, png_bytes, tile, upscale

METRICS = ("total", "recon", "kl", "averaging")
SPLITS = {"train": "#1a73e8", "test": "#e8710a"}


class TrainingMonitor(W.VBox):
    """``history[split][metric]`` holds ``(steps, values)`` lists; the figure shows them log-scaled.

    ``latent`` is the newest test record that carries ``kl_per_dim`` (None before one arrives):
    its per-dimension KL is drawn as bars (``kl_figure``), its ``active_dims`` go into the status
    line, and ``latent_collapsed`` shows a warning line (``warning``) above the curves.

    With a run directory, ``job`` is the launched job (default: the one ``job.json`` names, picked
    up again after each resubmission) and ``queue_state`` its state in Slurm's words (``PENDING``,
    ``RUNNING``, ``COMPLETED``, ``FAILED``, ``CANCELLED``, or ``UNKNOWN`` when the queue cannot be
    asked; None without a job). ``progress`` holds the newest training step, ``max_steps`` (this
    job's target: a resubmission may raise it), images/s over all ranks and
    the ETA in seconds (from the step rate of the last two training records), and ``volume`` shows
    three orthogonal projections of the newest decoded volume the Trainer wrote (``volume_path``).
    """

    def __init__(self, run_dir: str | os.PathLike | None = None, *, metrics: Sequence[str] = METRICS,
                 poll_interval: float | None = None, max_samples: int = 8, job: Job | None = None):
        self.run_dir = Path(run_dir) if run_dir is not None else None
        self.job = job
        self.queue_state: str | None = None
        self._job_error: str | None = None
        self.max_steps: int | None = None
        self._config_stamp: tuple | None = None   # where max_steps was read from, and that file's mtime
        self._last_train: list[dict] = []       # the two newest training records (the step rate)
        self.volume_path: Path | None = None
        self.metrics = tuple(metrics)
        self.max_samples = max_samples
        self.history: dict[str, dict[str, tuple[list, list]]] = defaultdict(
            lambda: {m: ([], []) for m in self.metrics})
        self.sample_step: int | None = None
        self.latent: dict | None = None
        self._reader = None if self.run_dir is None else RunFolder(self.run_dir).metrics_reader()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.figure = _loss_figure(self.metrics)
        self.samples = W.Image(format="png")
        self.kl_figure = _kl_figure()
        self.status = W.HTML()
        self.warning = W.HTML(layout=W.Layout(display="none"))
        self.volume = W.Image(format="png")
        self.volume_caption = W.HTML()
        refresh = W.Button(description="refresh", icon="refresh", disabled=self.run_dir is None)
        refresh.on_click(lambda _: self._safe_refresh())
        volume_box = W.VBox([self.volume_caption, self.volume], layout=W.Layout(margin="0 0 0 16px"))
        super().__init__([W.HBox([refresh, self.status]), self.warning, self.figure, self.kl_figure,
                          W.HBox([W.VBox([W.HTML("<b>latest samples</b>: input, projection, overlay"),
                                          self.samples]), volume_box],
                                 layout=W.Layout(flex_flow="row wrap"))])
        if self.run_dir is not None:
            self._safe_refresh()
        if poll_interval:
            self.start_polling(poll_interval)

    # -- in-process callbacks (the Trainer calls these) ---------------------------------------
    def on_metrics(self, record: dict) -> None:
        self._add([record])
        self._redraw()

    def on_samples(self, images, projections, step: int) -> None:
        k = self.max_samples
        self.samples.value = comparison_png(np.asarray(images)[:k], np.asarray(projections)[:k])
        self.sample_step = int(step)
        self._set_status()

    def on_checkpoint(self, path: str) -> None:
        self._set_status()
        self.status.value += f" &middot; checkpoint {html.escape(Path(path).name)}"

    # -- run-directory reading ----------------------------------------------------------------
    @property
    def metrics_path(self) -> Path | None:
        return None if self._reader is None else self._reader.path

    def refresh(self) -> int:
        """Read what was appended to metrics.jsonl since last time and the newest sample PNG.

        Returns the number of new records. A half-written last line (the writer is mid-append)
        is left for the next call.
        """
        if self._reader is None:
            raise InputError("this monitor has no run directory; it is fed by on_metrics()")
        records, restarted = self._reader.read()
        if restarted:   # the file was replaced: a new run
            self.history.clear()
            self.latent = None
            self._last_train = []
        self._add(records)
        self._read_job()
        self._read_max_steps()
        self._read_latest_sample()
        self._read_latest_volume()
        self._redraw()
        return len(records)

    @property
    def progress(self) -> dict:
        """step, max_steps, images_per_s (all ranks) and eta_s of the newest training record."""
        with self._lock:
            last = list(self._last_train)
        out = {"step": None, "max_steps": self.max_steps, "images_per_s": None, "eta_s": None}
        if not last:
            return out
        rec = last[-1]
        out["step"] = int(rec["step"])
        if rec.get("images_per_s") is not None:
            # the Horovod reduction averages each rank's rate: the job's is that times the ranks
            out["images_per_s"] = float(rec["images_per_s"]) * int(rec.get("ranks") or 1)
        if len(last) == 2 and self.max_steps is not None and self.queue_state in (None, "RUNNING"):
            d_step = int(last[1]["step"]) - int(last[0]["step"])
            d_time = float(last[1].get("time") or 0) - float(last[0].get("time") or 0)
            if d_step > 0 and d_time > 0:
                out["eta_s"] = max(self.max_steps - out["step"], 0) * d_time / d_step
        return out

    def start_polling(self, interval: float = 5.0) -> None:
        """Call ``refresh()`` every ``interval`` seconds in a daemon thread until ``stop_polling()``."""
        if self.run_dir is None:
            raise InputError("polling needs a run directory")
        self.stop_polling()
        self._stop.clear()

        def loop():
            while not self._stop.wait(interval):
                self._safe_refresh()

        self._thread = threading.Thread(target=loop, name="cryovae-monitor", daemon=True)
        self._thread.start()

    def stop_polling(self) -> None:
        if self._thread is not None:
            self._stop.set()
            self._thread.join()
            self._thread = None

    @property
    def polling(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    # -- internals ----------------------------------------------------------------------------
    def _safe_refresh(self) -> None:
        # the poll thread and the button must not die on a bad line: show the error instead
        try:
            self.refresh()
        except CryoVAEError as e:
            self.status.value = f"<span style='color:#c5221f'>{html.escape(str(e))}</span>"

    def _add(self, records) -> None:
        with self._lock:
            for rec in records:
                split = str(rec.get("split", "train"))
                if split == "test" and isinstance(rec.get("kl_per_dim"), list) and (
                        self.latent is None or int(rec["step"]) >= int(self.latent["step"])):
                    self.latent = rec
                if split == "train" and "step" in rec:
                    if self._last_train and int(rec["step"]) <= int(self._last_train[-1]["step"]):
                        self._last_train = []   # a resumed run logs again from its checkpoint
                    self._last_train = (self._last_train + [rec])[-2:]
                for m in self.metrics:
                    if rec.get(m) is not None and np.isfinite(float(rec[m])):
                        steps, values = self.history[split][m]
                        steps.append(int(rec["step"]))
                        values.append(float(rec[m]))

    def _read_latest_sample(self) -> None:
        steps = {}
        for png in (self.run_dir / "samples").glob("step_*.png"):
            try:
                steps[int(png.stem.split("_", 1)[1])] = png
            except ValueError:
                continue  # e.g. an atomic writer's temporary file
        if steps and max(steps) != self.sample_step:
            self.sample_step = max(steps)
            self.samples.value = steps[self.sample_step].read_bytes()

    def _read_job(self) -> None:
        """The job's state; job.json is re-read each time, so a resubmission's job replaces the last."""
        try:
            if (self.run_dir / JOB_FILE).exists():
                self.job = attach(self.run_dir)
            if self.job is None:
                return
            self.queue_state, self._job_error = self.job.status().upper(), None
        except LaunchError as e:  # e.g. squeue unreachable: say so, keep the curves coming
            self.queue_state, self._job_error = "UNKNOWN", str(e).splitlines()[0]

    def _read_max_steps(self) -> None:
        """The job's own max_steps: its ``--max-steps``, else its ``--config`` file's; without a job,
        the run's config.json. (A resumed run keeps the config.json it started with, so that file
        alone would show the first submission's target after a resubmission with a higher one.)"""
        cmd = [str(a) for a in (self.job.command or [])] if self.job is not None else []
        if "--max-steps" in cmd[:-1]:
            key, read = ("arg", cmd[cmd.index("--max-steps") + 1]), None
        elif "--config" in cmd[:-1]:
            path = Path(cmd[cmd.index("--config") + 1])
            key, read = (str(path), _mtime(path)), lambda: load_config(TrainConfig, path).max_steps
        else:
            path = self.run_dir / CONFIG_FILE
            key, read = (str(path), _mtime(path)), lambda: RunFolder(self.run_dir).config().max_steps
        if key == self._config_stamp or key[1] is None:
            return
        try:
            self.max_steps = int(key[1]) if read is None else int(read())
            self._config_stamp = key
        except (CryoVAEError, ValueError):
            pass  # mid-write or unreadable: the next refresh tries again

    def _read_latest_volume(self) -> None:
        newest = None
        for folder in (self.run_dir / "samples").glob("step_*"):
            if not folder.is_dir():
                continue
            try:
                step = int(folder.name.split("_", 1)[1])
            except ValueError:
                continue
            mrcs = sorted(folder.glob("particle_*.mrc"))
            if mrcs and (newest is None or step > newest[0]):
                newest = (step, mrcs[0])
        if newest is None or newest[1] == self.volume_path:
            return
        try:
            volume, voxel = read_volume(newest[1])
        except (CryoVAEError, OSError, ValueError):
            return  # being written: the next refresh reads it
        self.volume_path = newest[1]
        # projections along z, y and x: the whole decoded density at a glance, no threshold to pick
        planes = normalise01(np.stack([volume.sum(axis=a) for a in range(3)]))
        self.volume.value = png_bytes(tile(upscale(planes), ncols=3))
        self.volume_caption.value = (f"<b>newest decoded volume</b>: step {newest[0]}, "
                                     f"{html.escape(newest[1].stem)} ({volume.shape[0]}&sup3; px, "
                                     f"{voxel:.3g} &Aring;/px), projections along z, y, x")

    def _redraw(self) -> None:
        with self._lock, self.figure.batch_update():
            for trace in self.figure.data:
                split, metric = trace.meta
                steps, values = self.history[split][metric] if split in self.history else ([], [])
                # log axes cannot show values <= 0 (a KL can be 0 at start): plotly drops them
                trace.x, trace.y = list(steps), list(values)
        self._draw_latent()
        self._set_status()

    def _draw_latent(self) -> None:
        with self._lock:
            rec = self.latent
        bars = self.kl_figure.data[0]
        if rec is None:
            with self.kl_figure.batch_update():
                bars.x, bars.y = [], []
            self.warning.layout.display = "none"
            return
        kl = [np.nan if v is None else float(v) for v in rec["kl_per_dim"]]
        with self.kl_figure.batch_update():
            bars.x, bars.y = [f"z{i + 1}" for i in range(len(kl))], kl
            self.kl_figure.layout.title.text = (f"KL per latent dimension (test, step {rec['step']}, "
                                                f"nats/image)")
        if rec.get("latent_collapsed"):
            total = rec.get("kl")
            kl_text = "" if total is None else f", KL {float(total):.3g} nats/image"
            self.warning.value = (
                "<div style='color:#c5221f;font-weight:bold'>&#9888; latent collapsed at step "
                f"{rec['step']}: 0 of {len(kl)} latent dimensions active on the held-out images{kl_text}. "
                "The latent carries no information about the particles: either they are homogeneous, "
                "or the posterior collapsed (try model.loss.kl_warmup_steps, model.loss.free_bits or a lower "
                "model.loss.averaging_factor).</div>")
            self.warning.layout.display = None
        else:
            self.warning.value = ""
            self.warning.layout.display = "none"

    def _set_status(self) -> None:
        last = max((s[-1] for h in self.history.values() for s, _ in h.values() if s), default=None)
        parts = []
        if self.queue_state is not None:
            where = "" if self.job is None else f" ({html.escape(self.job.describe())})"
            parts.append(f"<b>{self.queue_state}</b>{where}")
            if self._job_error:
                parts.append(html.escape(self._job_error))
        if last is None:
            parts.append("no metrics yet")
        else:
            parts.append(f"step {last}" + (f" of {self.max_steps}" if self.max_steps is not None else ""))
        prog = self.progress
        if prog["images_per_s"] is not None:
            parts.append(f"{prog['images_per_s']:.4g} images/s")
        if prog["eta_s"] is not None:
            parts.append(f"ETA {_duration(prog['eta_s'])}")
        rec = self.latent
        if rec is not None and rec.get("active_dims") is not None:
            parts.append(f"active latent dims {rec['active_dims']}/{len(rec['kl_per_dim'])} "
                         f"(test, step {rec['step']})")
        if self.sample_step is not None:
            parts.append(f"samples from step {self.sample_step}")
        if self.polling:
            parts.append("polling")
        self.status.value = " &middot; ".join(parts)


def _mtime(path: Path) -> int | None:
    try:
        return path.stat().st_mtime_ns
    except OSError:
        return None


def _duration(seconds: float) -> str:
    seconds = int(round(seconds))
    h, rest = divmod(seconds, 3600)
    m, s = divmod(rest, 60)
    return f"{h} h {m:02d} min" if h else (f"{m} min {s:02d} s" if m else f"{s} s")


def _kl_figure() -> go.FigureWidget:
    fig = go.Figure(go.Bar(x=[], y=[], marker=dict(color=SPLITS["test"]), name="KL"))
    fig.update_layout(height=220, margin=dict(l=50, r=20, t=40, b=40),
                      title=dict(text="KL per latent dimension (test, nats/image)", font=dict(size=13)))
    fig.update_yaxes(rangemode="tozero")
    return go.FigureWidget(fig)


def _loss_figure(metrics: Sequence[str]) -> go.FigureWidget:
    cols = 2 if len(metrics) > 1 else 1
    rows = -(-len(metrics) // cols)
    fig = make_subplots(rows=rows, cols=cols, subplot_titles=list(metrics), vertical_spacing=0.15)
    for i, m in enumerate(metrics):
        r, c = divmod(i, cols)
        for split, color in SPLITS.items():
            fig.add_scatter(x=[], y=[], name=split, meta=[split, m], mode="lines+markers",
                            marker=dict(size=4), line=dict(color=color), legendgroup=split,
                            showlegend=i == 0, row=r + 1, col=c + 1)
        fig.update_yaxes(type="log", row=r + 1, col=c + 1)
        fig.update_xaxes(title_text="step" if r == rows - 1 else None, row=r + 1, col=c + 1)
    fig.update_layout(height=220 * rows + 60, margin=dict(l=50, r=20, t=40, b=40))
    return go.FigureWidget(fig)
