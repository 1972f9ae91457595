"""`cryovae analyze` / `analysis.report.report` on a small trained hinge run: every file of the report
exists and is valid, the k-means volumes differ where the hinge moves, re-runs reuse what is done,
bad input is one line."""
from __future__ import annotations

import json
import re
from html.parser import HTMLParser
from pathlib import Path

import numpy as np
import pytest
import starfile
from PIL import Image

from cryovae_nb import cli
from cryovae_nb.analysis.latent import deshrink
from cryovae_nb.analysis.report import ReportOptions, report
from cryovae_nb.errors import InputError
from cryovae_nb.io import read_particles, read_volume

K = 4


@pytest.fixture(scope="module")
def hinge_run(tmp_path_factory):
    """The tutorial's hinge (box 20, 600 particles, SNR 1: a clear motion in a minute of training),
    known poses, trained 300 steps with the tutorial's layout (simulated/, preprocessed/, run/)."""
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.training.trainer import Trainer
    from cryovae_nb.tutorial.workspace import simulate_tutorial_data, tutorial_paths, tutorial_train_config

    root = tmp_path_factory.mktemp("report")
    simulate_tutorial_data(root, box=20, n_particles=600, snr=1.0, phantom="hinge", progress=False)
    paths = tutorial_paths(root)
    paths.particles.parent.mkdir(parents=True)
    preprocess_stack(paths.raw, paths.particles, PreprocessConfig(), progress=False)
    cfg = tutorial_train_config(paths, paths.run_dir("run"), pose_mode="known", max_steps=300, max_time_s=None,
                                sample_every=10**9, checkpoint_every=10**9, latent_dim=4, encoder_layers=1,
                                encoder_units=64, decoder_layers=1, decoder_units=64, batch_size=64)
    Trainer(cfg, progress=False, resume=False).train()
    return root


@pytest.fixture(scope="module")
def analysed(hinge_run):
    """The report as a cluster user makes it: `cryovae analyze RUN --k 4` (default folder)."""
    assert cli.main(["analyze", str(hinge_run / "run"), "--k", str(K)]) == 0
    (out,) = (hinge_run / "run" / "analysis").iterdir()
    return out, json.loads((out / "report.json").read_text())


@pytest.fixture(scope="module")
def trained(hinge_run):
    from cryovae_nb.inference import load_run

    return load_run(hinge_run / "run")


class _Links(HTMLParser):
    def __init__(self):
        super().__init__()
        self.links = []

    def handle_starttag(self, tag, attrs):
        self.links += [v for k, v in attrs if k in ("href", "src")]


def test_every_file_exists_and_is_valid(analysed, trained):
    out, summary = analysed
    assert out.name == trained.checkpoint.name  # one folder per checkpoint
    for f in summary["files"]:
        assert (out / f).exists(), f
    pngs = [f for f in summary["files"] if f.endswith(".png")]
    # PCA and UMAP, each by cluster, optics group is constant here (skipped), by the true hinge t
    assert {"latent/pca_k_means_cluster.png", "latent/umap_k_means_cluster.png",
            "latent/pca_true_hinge_parameter_t.png", "latent/explained_variance.png",
            "particles/nearest_to_centres.png", "particles/worst_particles.png", "fsc/fsc.png"} <= set(pngs)
    for f in pngs:
        with Image.open(out / f) as im:
            im.verify()
        with Image.open(out / f) as im:
            assert min(im.size) > 100, f
    # volumes: the run's voxel size and box; one per cluster, `steps` per principal component
    assert len(summary["series"]["kmeans"]) == K and len(summary["series"]["pc1"]) == 10
    for name, files in summary["series"].items():
        for f in files:
            vol, voxel = read_volume(out / f)
            assert vol.shape == (trained.box,) * 3 and np.isfinite(vol).all()
            assert voxel == pytest.approx(trained.pixel_size)
    for name, gif in summary["movies"].items():
        with Image.open(out / gif) as im:
            assert im.format == "GIF" and im.n_frames > 1, name
    # ChimeraX: each series opened by a pattern naming its files, the voxel size, a level inside the maps
    cxc = (out / "report.cxc").read_text().splitlines()
    opens = [line.split()[1] for line in cxc if line.startswith("open ")]
    assert len(opens) == len(summary["series"])
    for pattern, (name, files) in zip(opens, summary["series"].items()):
        assert sorted(str(p.relative_to(out)) for p in out.glob(pattern)) == sorted(files)
    for i, (name, files) in enumerate(summary["series"].items(), start=1):
        (line,) = [x for x in cxc if x.startswith(f"volume #{i} ")]
        level = float(re.search(r"level (\S+)", line).group(1))
        assert float(re.search(r"voxelSize (\S+)", line).group(1)) == pytest.approx(trained.pixel_size)
        vals = np.concatenate([read_volume(out / f)[0].ravel() for f in files])
        assert np.median(vals) < level < vals.max()
    # index.html: every link and image resolves inside the report
    parser = _Links()
    parser.feed((out / "index.html").read_text())
    assert len(parser.links) > 20
    for link in parser.links:
        assert not Path(link).is_absolute() and (out / link).exists(), link
    fsc = json.loads((out / "fsc" / "fsc.json").read_text())
    assert summary["fsc"]["resolution_05_A"] >= 2 * trained.pixel_size - 1e-9 and len(fsc["curve"]) == 11


def test_selections_are_each_clusters_rows_of_the_original(analysed, trained):
    out, summary = analysed
    labels = np.load(out / "selections" / "kmeans_labels.npy", allow_pickle=False)
    particles = trained.particles
    assert labels.shape == (len(particles),)
    rows = particles.source_rows()
    for k, sel in summary["selections"]["clusters"].items():
        idx = np.load(out / sel["indices"], allow_pickle=False)
        np.testing.assert_array_equal(idx, np.sort(rows[labels == int(k)]))
        table = starfile.read(out / sel["star"], always_dict=True)["particles"]
        assert len(table) == sel["n"] == int((labels == int(k)).sum())
    assert sum(s["n"] for s in summary["selections"]["screen"].values()) == len(particles)


def test_group_volumes_are_the_deshrunk_centres_decoded(analysed, trained):
    out, summary = analysed
    (enc,) = (out / "cache").glob("encoding-*.npz")
    with np.load(enc, allow_pickle=False) as f:
        z, z_logvar = f["z_mean"], f["z_logvar"]
    labels = np.load(out / "selections" / "kmeans_labels.npy", allow_pickle=False)
    centres = np.stack([z[labels == k].mean(0) for k in range(K)])  # k-means' centres: its clusters' means
    expected = trained.decode(deshrink(centres, z_logvar))
    got = np.stack([read_volume(out / f)[0] for f in summary["series"]["kmeans"]])
    np.testing.assert_allclose(got, expected, atol=1e-3 * np.abs(expected).max())
    assert not np.allclose(got, trained.decode(centres), atol=1e-3 * np.abs(expected).max())


def _truth_regions(workdir: Path, box: int):
    """(arm, body): voxels the moving bar covers at some hinge angle but not all, and the voxels
    dense at every angle (the long bar), from the simulator's truth maps."""
    from cryovae_nb.synthetic import load_truth

    truth = load_truth(workdir / "simulated")
    vols = np.stack([read_volume(workdir / "simulated" / str(f))[0] for f in truth["volume_files"]])
    assert vols.shape[1] == box
    dense = vols > 0.5 * vols.max()
    body, anywhere = dense.all(axis=0), dense.any(axis=0)
    return anywhere & ~body, body


@pytest.mark.parametrize("series", ["kmeans", "pc1"])
def test_group_volumes_differ_in_the_moving_part(analysed, hinge_run, trained, series):
    out, summary = analysed
    arm, body = _truth_regions(hinge_run, trained.box)
    assert arm.sum() > 20 and body.sum() > 20
    vols = np.stack([read_volume(out / f)[0] for f in summary["series"][series]])
    spread = vols.std(axis=0)  # how much each voxel changes between the cluster / PC volumes
    assert spread[arm].mean() > 2.0 * spread[body].mean(), (spread[arm].mean(), spread[body].mean())


def test_copied_notebooks_open_this_run(analysed, hinge_run):
    from cryovae_nb.tutorial.project import check_folders, read_project
    from cryovae_nb.tutorial.workspace import ensure_tutorial_run

    out, summary = analysed
    assert summary["notebooks"] == ["04_evaluate.ipynb", "05_latent_landscape.ipynb"]
    project = read_project(out)
    assert project.run_dir.resolve() == (hinge_run / "run").resolve()
    assert project.preprocessed_star.resolve() == (hinge_run / "preprocessed" / "particles.star").resolve()
    check_folders(project)  # the preprocessed set is the project's input's
    assert ensure_tutorial_run(out, budget_s=0.0).resolve() == (hinge_run / "run").resolve()  # no training
    for name in summary["notebooks"]:
        nb = json.loads((out / name).read_text())
        (cell,) = [c for c in nb["cells"] if "injected-parameters" in c["metadata"].get("tags", [])]
        assert f"WORKDIR = {str(out.resolve())!r}" in cell["source"]
    assert "N_CLUSTERS = 4" in [c for c in json.loads((out / summary["notebooks"][1]).read_text())["cells"]
                                if "injected-parameters" in c["metadata"].get("tags", [])][0]["source"]


def test_the_screening_figure_is_the_loss_data_term(analysed, trained):
    """The report screens on each particle's training-loss data term (as notebook 05 does, through
    the one ``TrainedRun.reconstruction_errors``): the Gaussian negative log-likelihood in nats of
    its image about the model's image of it, at the run's noise variance, over the loss's pixels."""
    import pandas as pd

    out, _ = analysed
    particles = trained.particles
    assert trained.config.model.loss.likelihood == "gaussian"
    idx = np.arange(0, len(particles), 41)
    errors = trained.reconstruction_errors(particles, idx)
    images, predicted = trained.reconstruct(particles, idx)
    var = float(trained.model.noise_variance())
    mask = trained.model._pixel_mask  # the loss's pixels (None: all)
    mask = np.ones(images.shape[1:]) if mask is None else np.asarray(mask)
    sse = (mask * (np.asarray(images, np.float64) - predicted) ** 2).sum(axis=(1, 2))
    nll = 0.5 * sse / var + 0.5 * mask.sum() * np.log(2 * np.pi * var)
    np.testing.assert_allclose(errors, nll, rtol=1e-4)
    screened = pd.read_csv(out / "particles" / "screen.csv", index_col="particle")
    assert len(screened) == len(particles)
    np.testing.assert_allclose(screened["recon_error"].to_numpy()[idx], errors, rtol=1e-5)


class _Counting:
    """A run whose encode / decode / reconstruct(ion_errors) calls are counted (everything else
    passes through)."""

    def __init__(self, run):
        self._run, self.calls = run, {"encode": 0, "decode": 0, "reconstruct": 0, "reconstruction_errors": 0}

    def __getattr__(self, name):
        attr = getattr(self._run, name)
        if name in self.calls:
            def counted(*a, **kw):
                self.calls[name] += 1
                return attr(*a, **kw)
            return counted
        return attr


def test_a_rerun_reuses_what_is_done(analysed, trained):
    from cryovae_nb.tutorial.notebooks import notebooks_dir

    out, summary = analysed
    stamp = (out / "report.json").stat().st_mtime_ns
    run = _Counting(trained)
    again = report(run, out, ReportOptions(k=K), notebooks=notebooks_dir(), progress=False)
    assert run.calls == {"encode": 0, "decode": 0, "reconstruct": 0, "reconstruction_errors": 0}
    assert (out / "report.json").stat().st_mtime_ns == stamp and again["key"] == summary["key"]

    # other options: rebuilt, but the encoding, the UMAP and the reconstruction errors are reused
    (umap_cache,) = (out / "cache").glob("umap-*.npz")
    umap_stamp = umap_cache.stat().st_mtime_ns
    (out / "landscape").mkdir()
    (out / "landscape" / "mine.txt").write_text("kept")
    three = report(run, out, ReportOptions(k=3), notebooks=notebooks_dir(), progress=False)
    assert run.calls["encode"] == 0 and run.calls["reconstruction_errors"] == 0
    assert run.calls["reconstruct"] == 1  # only the worst particles' images
    assert run.calls["decode"] > 0 and three["cluster_sizes"] != summary["cluster_sizes"]
    assert len(three["cluster_sizes"]) == 3 and len(list((out / "volumes" / "kmeans").glob("*.mrc"))) == 3
    assert (out / "cache" / umap_cache.name).stat().st_mtime_ns == umap_stamp
    # what a notebook wrote into the report survives the rebuild
    assert (out / "landscape" / "mine.txt").read_text() == "kept"
    assert not list(out.parent.glob(".*tmp*"))  # published by renaming: no temporary folder left


def test_bad_inputs_are_one_line(hinge_run, trained, tmp_path, capsys):
    run = _Counting(trained)
    with pytest.raises(InputError, match=r"particles\.star: no column rlnNoSuch "):
        report(run, tmp_path / "r", ReportOptions(colour_by=("rlnNoSuch",), embeddings=("pca",)), progress=False)
    assert not (tmp_path / "r").exists() and run.calls["encode"] == 0  # before any work; nothing published
    for argv, expected in (([str(hinge_run / "run"), "--k", "0"], "--k"),
                           ([str(hinge_run), "--no-umap"], "not a training run directory"),
                           ([str(hinge_run / "run"), "--reference", str(tmp_path / "no.mrc")], "no.mrc"),
                           ([str(hinge_run / "run"), "--out", str(hinge_run / "simulated" / "truth.npz")], "truth.npz")):
        assert cli.main(["analyze", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("cryovae analyze: error:") and expected in err[0], err
    with pytest.raises(InputError, match="--k"):
        ReportOptions(k=0)
    mine = tmp_path / "my_folder"
    mine.mkdir()
    (mine / "notes.txt").write_text("mine")
    with pytest.raises(InputError, match="not a report folder"):  # never replaced
        report(trained, mine, ReportOptions(embeddings=("pca",)), progress=False)
    assert (mine / "notes.txt").read_text() == "mine"


def test_report_of_particles_without_an_original_skips_selections_with_a_note(trained, tmp_path):
    """A preprocessed STAR without provenance: the report still builds, saying what it skipped."""
    particles = read_particles(trained.config.data)

    class NoOriginal(_Counting):
        @property
        def particles(self):
            particles.provenance = None
            return particles

    s = report(NoOriginal(trained), tmp_path / "r", ReportOptions(k=2, embeddings=("pca",), pcs=1, steps=3),
               progress=False)
    assert any("selections as STAR subsets skipped" in n for n in s["notes"])
    assert any("notebooks not copied" in n for n in s["notes"])
    assert "clusters" not in s["selections"] and (tmp_path / "r" / "selections" / "kmeans_labels.npy").is_file()
    assert s["fsc"] is None  # no truth found without the original, and no --reference


def test_learned_pose_run_of_a_cli_layout(tmp_path):
    """`cryovae analyze --checkpoint --out --no-umap` on a learned-pose run whose data is `p.star`
    (the command-line layout, not the tutorial's): the volumes are brought to one hand, the
    copied notebooks see the set under the project file's name particles.star and open the
    analysed checkpoint, not the run's newest."""
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer
    from cryovae_nb.tutorial.project import check_folders, read_project

    ds = simulate(SimulationConfig(box=16, n_particles=120, snr=1.0, pixel_size=2.5, seed=2), tmp_path / "sim",
                  progress=False)
    preprocess_stack(ds.star, tmp_path / "pre" / "p", PreprocessConfig(), progress=False)
    model = ModelConfig().with_options(box=16, latent_dim=3, encoder_layers=1, encoder_units=32,
                                       decoder_layers=1, decoder_units=32, pose_mode="learned")
    Trainer(TrainConfig(data=str(tmp_path / "pre" / "p.star"), run_dir=str(tmp_path / "run"), model=model,
                        batch_size=40, max_steps=8, log_every=4, sample_every=100, checkpoint_every=4,
                        n_test_eval=20), progress=False).train()
    ckpt, newest = sorted((tmp_path / "run" / "checkpoints").glob("step_*"))  # the older one analysed
    out = tmp_path / "report"
    assert cli.main(["analyze", str(tmp_path / "run"), "--checkpoint", str(ckpt), "--out", str(out),
                     "--no-umap", "--k", "2", "--steps", "3"]) == 0
    s = json.loads((out / "report.json").read_text())
    assert s["step"] == 4 and len(s["series"]["kmeans"]) == 2 and len(s["series"]["pc2"]) == 3
    assert read_volume(out / s["series"]["pc1"][0])[1] == pytest.approx(2.5)
    assert not any(f.startswith("latent/umap") for f in s["files"])
    project = read_project(out)
    assert project.preprocessed_star.resolve() == (tmp_path / "pre" / "p.star").resolve()
    check_folders(project)
    assert len(read_particles(project.preprocessed_star)) == 120  # its stack found through the links
    assert s["notebooks"] == ["04_evaluate.ipynb", "05_latent_landscape.ipynb"]
    for name in s["notebooks"]:
        cells = json.loads((out / name).read_text())["cells"]
        params = {}
        for c in cells:  # the notebook's parameters, then the report's
            if {"parameters", "injected-parameters"} & set(c["metadata"].get("tags", [])):
                exec("".join(c["source"]), params)
        assert Path(params["CHECKPOINT"]) == ckpt.resolve() != newest.resolve()
        code = "".join("".join(c["source"]) for c in cells if c["cell_type"] == "code")
        opens = re.findall(r"load_run\(([^)]*)\)", code)  # every run the notebook opens is at CHECKPOINT
        assert opens and all("checkpoint=CHECKPOINT" in a for a in opens), (name, opens)
    from cryovae_nb.inference import load_run

    assert load_run(project.run_dir, checkpoint=params["CHECKPOINT"]).step == s["step"] == 4


def test_colours_are_the_original_rows_of_each_particle(trained, hinge_run, tmp_path):
    from cryovae_nb.analysis.report_parts import colour_columns

    particles = trained.particles.subset(np.arange(len(trained.particles))[::-1])  # another order
    notes = []
    colours = colour_columns(particles, ReportOptions(colour_by=("rlnAngleTilt",)), notes)
    original = starfile.read(hinge_run / "simulated" / "particles.star", always_dict=True)["particles"]
    rows = particles.source_rows()
    values, categorical = colours["rlnAngleTilt"]
    np.testing.assert_array_equal(values, original["rlnAngleTilt"].to_numpy()[rows])
    assert not categorical and "rlnOpticsGroup" not in colours  # one optics group: nothing to colour
    from cryovae_nb.synthetic import load_truth

    t, _ = colours["true hinge parameter t"]
    np.testing.assert_array_equal(t, load_truth(hinge_run / "simulated")["t"][rows])
    # a --star of another length that records no rows is refused, naming it
    short = tmp_path / "short.star"
    starfile.write({"particles": original.iloc[:10]}, short)
    plain = read_particles(trained.config.data)
    plain.provenance = None
    with pytest.raises(InputError, match=r"short\.star: holds 10 particles"):
        colour_columns(plain, ReportOptions(star=str(short)), [])
