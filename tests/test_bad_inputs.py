"""The bad-input table: every case in docs/bad_inputs.md, run, and the doc checked against it.

The cases live here (CASES); ``docs/bad_inputs.md`` is rendered from them, and
test_doc_lists_exactly_these_cases fails when the two differ, so the doc cannot drift.
Regenerate it with ``python tests/test_bad_inputs.py``.

A CLI case runs ``cryovae_nb.cli.main`` in this process (each subprocess that imports TensorFlow
costs seconds) and passes when the exit status is 2 and stderr is exactly one line,
``cryovae CMD: error: MESSAGE``; the cases marked ``sub`` run the real console script in a
subprocess the same way. An API case evaluates one call and expects the project's error family.
``{DATA}`` is a tiny preprocessed dataset, ``{RUN}`` a tiny trained run on it, ``{TMP}`` a fresh
folder per case holding ``afile`` (a file) and ``adir`` (an empty folder). In a message, ``...``
stands for any text (numbers that depend on the data, library wording).
"""
from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pytest

DOC = Path(__file__).resolve().parent.parent / "docs" / "bad_inputs.md"


@dataclass(frozen=True)
class Case:
    where: str                  # a cryovae subcommand, or "api"
    input: tuple | str          # CLI arguments after the subcommand, or one Python call (api)
    message: str                # what the user sees after "cryovae CMD: error: " (api: "Error: ...")
    files: dict = field(default_factory=dict)  # {name: text} written into {TMP} first
    sub: bool = False           # run the real console script in a subprocess


YAML_TYPE = {"bad.yaml": "data: {DATA}/p.star\nbatch_size: \"abc\"\n"}

CASES = [
    # -- preprocess ------------------------------------------------------------------------------
    Case("preprocess", ("{TMP}/nope.star", "-o", "{TMP}/out"), "{TMP}/nope.star: file not found", sub=True),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--pixel-size", "inf"),
         "argument --pixel-size: must be a finite number, got 'inf' (see 'cryovae preprocess --help')", sub=True),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--pixel-size", "nan"),
         "argument --pixel-size: must be a finite number, got 'nan' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--pixel-size", "0"),
         "argument --pixel-size: must be > 0, got '0' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--pixel-size", "-1.5"),
         "argument --pixel-size: must be > 0, got '-1.5' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--mask", "5"),
         "argument --mask: must be >= 0 and <= 1, got '5' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--coarsen", "0"),
         "argument --coarsen: must be >= 1, got '0' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--box", "-4"),
         "argument --box: must be >= 1, got '-4' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--test-fraction", "1"),
         "argument --test-fraction: must be >= 0 and < 1, got '1' (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/out", "--chunk-size", "abc"),
         "argument --chunk-size: 'abc' is not an integer (see 'cryovae preprocess --help')"),
    Case("preprocess", ("{DATA}/p.star", "-o", ""), "-o/--output: the output file name is empty"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/."),
         "{TMP}/.: -o/--output names a folder, not a file (give a file name)",
         sub=True),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/adir"),
         "{TMP}/adir: -o/--output is an existing folder, not a file (give a file name inside it)"),
    Case("preprocess", ("{DATA}/p.star", "-o", "{TMP}/afile/out"),
         "{TMP}/afile/out: cannot create a file below {TMP}/afile, which is a file, not a folder"),
    Case("preprocess", ("{TMP}/broken.mrcs", "-o", "{TMP}/out"),
         "{TMP}/broken.mrcs: not an MRC file: 19 bytes, shorter than the 1024-byte header",
         files={"broken.mrcs": "not an MRC file\n..."}),
    # /sys refuses new files even to root (and a user's access check refuses it first)
    Case("preprocess", ("{DATA}/p.star", "-o", "/sys/cryovae_test/out"), "/sys/cryovae_test/out...: ..."),
    # -- simulate --------------------------------------------------------------------------------
    Case("simulate", ("-o", "{TMP}/sim", "--snr", "nan"),
         "argument --snr: must be a finite number, got 'nan' (see 'cryovae simulate --help')"),
    Case("simulate", ("-o", "{TMP}/afile", "--box", "16", "-n", "4"),
         "{TMP}/afile: -o/--out must be a folder, but this is a file"),
    # -- train -----------------------------------------------------------------------------------
    Case("train", ("--data", "{TMP}/nope.star", "--run-dir", "{TMP}/run"), "{TMP}/nope.star: file not found"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "/sys/cryovae_test"), "/sys/cryovae_test...: ...",
         sub=True),
    Case("train", ("--config", "{TMP}/bad.yaml", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.yaml: TrainConfig.batch_size must be an integer (int), got 'abc' (str)", files=YAML_TYPE,
         sub=True),
    Case("train", ("--config", "{TMP}/bad.json", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.json: TrainConfig.learning_rate must be a number (float), got 'fast' (str)",
         files={"bad.json": '{"learning_rate": "fast"}'}),
    Case("train", ("--config", "{TMP}/bad.yaml", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.yaml: ArchitectureConfig.latent_dim must be an integer (int), got 2.5 (float)",
         files={"bad.yaml": "model:\n  architecture:\n    latent_dim: 2.5\n"}),
    Case("train", ("--config", "{TMP}/bad.yaml", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.yaml: TrainConfig.jit must be true or false or null, got 'yes please' (str)",
         files={"bad.yaml": "jit: yes please\n"}),
    Case("train", ("--config", "{TMP}/bad.yaml", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.yaml: TrainConfig: unknown option(s) ['batchsize']; known: [...]",
         files={"bad.yaml": "batchsize: 10\n"}),
    Case("train", ("--config", "{TMP}/bad.yaml", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.yaml: not valid YAML: ...", files={"bad.yaml": "batch_size: [1, 2\n"}),
    Case("train", ("--config", "{TMP}/bad.json", "--run-dir", "{TMP}/run"),
         "{TMP}/bad.json: TrainConfig.test_fraction must be a finite number, got nan",
         files={"bad.json": '{"test_fraction": NaN}'}),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "{TMP}/run", "--batch-size", "0"),
         "argument --batch-size: must be >= 1, got '0' (see 'cryovae train --help')"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "{TMP}/run", "--learning-rate", "nan"),
         "argument --learning-rate: must be a finite number, got 'nan' (see 'cryovae train --help')"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "{TMP}/run", "--max-time", "-5"),
         "argument --max-time: must be > 0, got '-5' (see 'cryovae train --help')"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "{TMP}/afile"),
         "{TMP}/afile: --run-dir must be a folder, but this is a file"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "{TMP}/afile/run"),
         "{TMP}/afile/run: cannot create a folder below {TMP}/afile, which is a file, not a folder"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", ""), "--run-dir: the output folder name is empty"),
    Case("train", ("--data", "{DATA}/p.star", "--run-dir", "{TMP}/foreign"),
         "{TMP}/foreign: not a cryovae run folder (no cryovae_run.json) and not empty; refusing to write into "
         "it. Choose a new or empty run folder", files={"foreign/notes.txt": "mine\n"}),
    # -- encode ----------------------------------------------------------------------------------
    Case("encode", ("{TMP}/adir", "{DATA}/p.star", "-o", "{TMP}/z.npz"),
         "{TMP}/adir: not a training run directory (no config.json)"),
    Case("encode", ("{RUN}", "{DATA}/p.star", "-o", ""), "-o/--output: the output file name is empty"),
    Case("encode", ("{RUN}", "{DATA}/p.star", "-o", "{TMP}/adir/."),
         "{TMP}/adir/.: -o/--output names a folder, not a file (give a file name)"),
    Case("encode", ("{RUN}", "{DATA}/p.star", "-o", "{TMP}/z.npz", "--batch-size", "-1"),
         "argument --batch-size: must be >= 1, got '-1' (see 'cryovae encode --help')"),
    Case("encode", ("{RUN}", "{DATA}/p.star", "-o", "{TMP}/z.npz", "--star", "{TMP}/afile/p.star"),
         "{TMP}/afile/p.star: cannot create a file below {TMP}/afile, which is a file, not a folder"),
    Case("encode", ("{RUN}", "{TMP}/nope.mrcs", "-o", "{TMP}/z.npz"), "{TMP}/nope.mrcs: file not found", sub=True),
    # -- select ----------------------------------------------------------------------------------
    Case("select", ("{DATA}/p.star", "-o", "{TMP}/s"),
         "one of the arguments --indices --cluster --latent-range is required (see 'cryovae select --help')"),
    Case("select", ("{DATA}/p.star", "--indices", "{TMP}/rows.npy", "-o", "{TMP}/s"),
         "{TMP}/rows.npy: cannot read indices (...)", files={"rows.npy": "3, 5, 8\n"}),
    Case("select", ("{DATA}/p.star", "--latent-range", "1", "0", "1", "-o", "{TMP}/s"),
         "{DATA}/p.star: latents needed: give a run directory as SOURCE, or --encoding from 'cryovae encode'"),
    Case("select", ("{RUN}", "--cluster", "7", "--k", "3", "-o", "{TMP}/s"),
         "--cluster 7 is not one of the 3 clusters 0..2"),
    Case("select", ("{RUN}", "--latent-range", "1", "inf", "2", "-o", "{TMP}/s"),
         "--latent-range: must be a finite number, got 'inf'"),
    # -- generate --------------------------------------------------------------------------------
    Case("generate", ("{RUN}", "--prior", "0", "-o", "{TMP}/vols"),
         "argument --prior: must be >= 1, got '0' (see 'cryovae generate --help')"),
    Case("generate", ("{RUN}", "--traverse", "-1", "-o", "{TMP}/vols"),
         "argument --traverse: must be >= 0, got '-1' (see 'cryovae generate --help')"),
    Case("generate", ("{RUN}", "--prior", "2", "--steps", "0", "-o", "{TMP}/vols"),
         "argument --steps: must be >= 2, got '0' (see 'cryovae generate --help')"),
    Case("generate", ("{RUN}", "--z-file", "{TMP}/nope.npy", "-o", "{TMP}/vols"),
         "{TMP}/nope.npy: cannot read latents (...)"),
    Case("generate", ("{RUN}", "--interpolate", "0", "100000", "-o", "{TMP}/vols"),
         "{DATA}/p.star: particle 100000 out of range 0..63"),
    Case("generate", ("{RUN}", "--prior", "2", "-o", "{TMP}/afile"),
         "{TMP}/afile: -o/--outdir must be a folder, but this is a file"),
    Case("generate", ("{RUN}", "--prior", "2", "-o", "/sys/cryovae_test"), "/sys/cryovae_test...: ..."),
    # -- fsc -------------------------------------------------------------------------------------
    Case("fsc", ("{TMP}/nope.mrc", "{DATA}/vol16.mrc"), "{TMP}/nope.mrc: file not found"),
    Case("fsc", ("{DATA}/vol16.mrc", "{DATA}/vol16.mrc", "--pixel-size", "inf"),
         "argument --pixel-size: must be a finite number, got 'inf' (see 'cryovae fsc --help')"),
    Case("fsc", ("{DATA}/vol16.mrc", "{DATA}/vol8.mrc"),
         "{DATA}/vol8.mrc: shape (8, 8, 8) differs from {DATA}/vol16.mrc's (16, 16, 16)"),
    Case("fsc", ("{DATA}/vol16.mrc", "{DATA}/vol16.mrc", "--out", "{TMP}/."),
         "{TMP}/.: --out names a folder, not a file (give a file name)"),
    # -- launch ----------------------------------------------------------------------------------
    Case("launch", ("{DATA}/train.yaml", "--run-dir", "{TMP}/run", "--np", "0", "--dry-run"),
         "argument --np: must be >= 1, got '0' (see 'cryovae launch --help')"),
    Case("launch", ("{DATA}/train.yaml", "--run-dir", "{TMP}/run", "--nodes", "-1", "--dry-run"),
         "argument --nodes: must be >= 1, got '-1' (see 'cryovae launch --help')"),
    Case("launch", ("{DATA}/train.yaml", "--run-dir", "{TMP}/run", "--backend", "slurm", "--mem", "64G; rm -rf ~",
                    "--dry-run"),
         "SlurmOptions.mem='64G; rm -rf ~': not a plain Slurm value (no spaces, quotes or ';')"),
    Case("launch", ("{DATA}/train.yaml", "--run-dir", "{TMP}/afile/run", "--dry-run"),
         "{TMP}/afile/run: cannot create a folder below {TMP}/afile, which is a file, not a folder"),
    Case("launch", ("{TMP}/nope.yaml", "--run-dir", "{TMP}/run", "--dry-run"),
         "{TMP}/nope.yaml: config file not found"),
    # -- the notebook-facing API -----------------------------------------------------------------
    Case("api", 'load_run("{RUN}").decode(np.full((1, 2), np.nan))',
         "InputError: latent 0 holds NaN or infinite values"),
    Case("api", 'load_run("{RUN}").decode(np.zeros((1, 5)))', "InputError: latents have 5 dimensions, the model has 2"),
    Case("api", 'load_run("{RUN}").traverse(99, 5)', "InputError: dim must be in 0..1, got 99"),
    Case("api", 'load_run("{RUN}").sample_prior(-1)',
         "InputError: the number of prior samples must be an integer >= 1, got -1"),
    Case("api", 'load_run("{RUN}").encode(np.zeros((3, 8, 8)), progress=False)',
         "InputError: images are (8, 8) px but the model was trained on 16 x 16; preprocess them the same way "
         "first"),
    Case("api", 'TrajectoryPlayer(np.zeros((2, 8, 8, 8)), labels=["a"])', "InputError: 1 labels for 2 frames"),
    Case("api", 'read_particles("{TMP}/nope.star")', "InputError: {TMP}/nope.star: file not found"),
    Case("api", 'load_run("{TMP}/adir")', "InputError: {TMP}/adir: not a training run directory (no config.json)"),
    Case("api", 'from_dict(TrainConfig, {"batch_size": "abc"})',
         "ConfigError: TrainConfig.batch_size must be an integer (int), got 'abc' (str)"),
    Case("api", 'write_volume("{TMP}/v.mrc", np.full((4, 4, 4), np.nan), 1.0)',
         "InputError: {TMP}/v.mrc: refusing to write a volume containing NaN or Inf"),
    Case("api", 'write_volume("{TMP}/v.mrc", np.zeros((4, 4)), 1.0)',
         "InputError: {TMP}/v.mrc: a volume must be 3D [z, y, x], got shape (4, 4)"),
    Case("api", 'write_particles_star("{TMP}/p.star", read_particles("{DATA}/p.star"), pixel_size=float("inf"))',
         "InputError: {TMP}/p.star: pixel size must be a finite number > 0 Å, got inf"),
    Case("api", "SimulationConfig(ctf=True, amp_contrast=2.0).validate()",
         "ConfigError: a CTF needs voltage > 0 kV and amp_contrast in [0, 1], got 300.0, 2.0"),
    Case("api", "grid_rotations(0)", "ConfigError: angular_step_deg must be a finite number > 0, got 0"),
    Case("api", "SlurmOptions(nodes=True).validate()",
         "ConfigError: SlurmOptions.nodes must be an integer (int), got True (bool)"),
    Case("api", "ParticleGallery(np.zeros((3, 8, 8)), np.zeros((2, 8, 8)))", "InputError: 3 inputs but 2 projections"),
    Case("api", "VolumeViewer(np.zeros((4, 4, 5)))",
         "InputError: a volume must be an n x n x n array, got shape (4, 4, 5)"),
]


def case_id(i: int, c: Case) -> str:
    return f"{i:02d}-{c.where}"


# -- the doc ------------------------------------------------------------------------------------

def _cell(text: str) -> str:
    return "`" + text.replace("|", "\\|") + "`"


def render_doc() -> str:
    lines = [
        "# Bad inputs and what the user sees",
        "",
        "Every row is run by `tests/test_bad_inputs.py`, which also checks that this file lists exactly",
        "its cases (regenerate with `python tests/test_bad_inputs.py`). A command-line error is one line",
        "on stderr, `cryovae CMD: error: MESSAGE`, exit status 2, never a traceback; a notebook call",
        "raises the project's error family (`cryovae_nb.errors`: `InputError` and `ConfigError` are also",
        "`ValueError`s). `{DATA}` is a preprocessed dataset, `{RUN}` a trained run, `{TMP}` a folder",
        "holding `afile` (a file) and `adir` (an empty folder); `...` stands for text that depends on the",
        "data or the system.",
        "",
        "| # | where | input | the user sees |",
        "|---|---|---|---|",
    ]
    for i, c in enumerate(CASES, 1):
        if c.where == "api":
            shown_in, shown_out = c.input, c.message
        else:
            shown_in = "cryovae " + " ".join([c.where, *(repr(a) if not a or " " in a else a for a in c.input)])
            shown_out = f"cryovae {c.where}: error: {c.message}"
        # a file's lines shown as \n, so the row stays one table row
        files = "".join(f"<br>with `{name}`: {_cell(text.strip().encode('unicode_escape').decode())}"
                        for name, text in c.files.items())
        lines.append(f"| {i} | {c.where} | {_cell(shown_in)}{files} | {_cell(shown_out)} |")
    return "\n".join(lines) + "\n"


def test_doc_lists_exactly_these_cases():
    assert DOC.read_text() == render_doc(), "docs/bad_inputs.md is stale: run `python tests/test_bad_inputs.py`"


def test_table_is_large_and_covers_every_surface():
    assert len(CASES) >= 40
    assert {c.where for c in CASES} >= {"preprocess", "train", "encode", "generate", "fsc", "launch", "api"}
    assert sum(c.sub for c in CASES) >= 4


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def bad_input_world(tmp_path_factory):
    """{DATA}: 64 simulated 16 px particles, preprocessed, two volumes, a training config;
    {RUN}: two training steps on them."""
    from cryovae_nb.config import save_config
    from cryovae_nb.io import write_volume
    from cryovae_nb.model import ModelConfig
    from cryovae_nb.preprocess import PreprocessConfig, preprocess_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.training.trainer import Trainer

    root = tmp_path_factory.mktemp("bad_inputs")
    data = root / "data"
    ds = simulate(SimulationConfig(box=16, n_particles=64, snr=1.0, pixel_size=2.0, seed=1), root / "sim",
                  progress=False)
    preprocess_stack(ds.star, data / "p", PreprocessConfig(), progress=False)
    rng = np.random.default_rng(0)
    write_volume(data / "vol16.mrc", rng.standard_normal((16, 16, 16)), 2.0)
    write_volume(data / "vol8.mrc", rng.standard_normal((8, 8, 8)), 2.0)
    model = ModelConfig().with_options(box=16, latent_dim=2, encoder_layers=1, encoder_units=16,
                                       decoder_layers=1, decoder_units=16)
    cfg = TrainConfig(data=str(data / "p.star"), run_dir=str(root / "run"), model=model, batch_size=16,
                      learning_rate=1e-3, max_steps=2, log_every=2, sample_every=100, checkpoint_every=2,
                      n_test_eval=8, n_samples=2, n_sample_volumes=0)
    save_config(cfg, data / "train.yaml")
    Trainer(cfg, progress=False).train()
    return {"DATA": str(data), "RUN": str(root / "run")}


def _paths(world, tmp_path) -> dict:
    (tmp_path / "afile").write_text("a file, not a folder\n")
    (tmp_path / "adir").mkdir()
    return {**world, "TMP": str(tmp_path)}


def _pattern(message: str, paths: dict) -> re.Pattern:
    """``message`` with its placeholders filled in and ``...`` matching anything."""
    parts = message.split("...")
    out = []
    for part in parts:
        for key, value in paths.items():
            part = part.replace("{" + key + "}", "\0" + key + "\0")
        out.append("".join(re.escape(paths[t]) if i % 2 else re.escape(t)
                           for i, t in enumerate(part.split("\0"))))
    return re.compile(".*".join(out), re.S)


def _fill(text: str, paths: dict) -> str:
    # not str.format: a JSON file's own braces must stay as they are
    for key, value in paths.items():
        text = text.replace("{" + key + "}", value)
    return text


def _write_files(case: Case, paths: dict) -> None:
    for name, text in case.files.items():
        p = Path(paths["TMP"]) / name
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(_fill(text, paths))


@pytest.mark.parametrize("case", CASES, ids=[case_id(i, c) for i, c in enumerate(CASES, 1)])
def test_bad_input(case, bad_input_world, tmp_path, capsys):
    paths = _paths(bad_input_world, tmp_path)
    _write_files(case, paths)
    expected = _pattern(case.message, paths)
    if case.where == "api":
        _run_api(case, paths, expected)
        return
    argv = [case.where, *(_fill(a, paths) for a in case.input)]
    if case.sub:
        proc = subprocess.run([sys.executable, "-m", "cryovae_nb.cli", *argv], capture_output=True, text=True,
                              timeout=600)
        rc, err = proc.returncode, proc.stderr
    else:
        from cryovae_nb.cli import main

        try:
            rc = main(argv)
        except SystemExit as e:  # argparse's own errors exit
            rc = e.code
        err = capsys.readouterr().err
    assert "Traceback" not in err
    assert rc == 2, err
    lines = err.strip("\n").split("\n")
    assert len(lines) == 1, err
    prefix = f"cryovae {case.where}: error: "
    assert lines[0].startswith(prefix), lines[0]
    assert expected.fullmatch(lines[0][len(prefix):]), f"\n{lines[0][len(prefix):]}\n!~ {expected.pattern}"
    # a refused command leaves no output behind
    assert not list(Path(paths["TMP"]).glob("out.*")) and not (Path(paths["TMP"]) / "run").exists()


def _run_api(case: Case, paths: dict, expected: re.Pattern) -> None:
    from cryovae_nb.config import from_dict
    from cryovae_nb.errors import CryoVAEError
    from cryovae_nb.geometry import grid_rotations
    from cryovae_nb.inference import load_run
    from cryovae_nb.io import read_particles, write_particles_star, write_volume
    from cryovae_nb.launch import SlurmOptions
    from cryovae_nb.synthetic import SimulationConfig
    from cryovae_nb.training.config import TrainConfig
    from cryovae_nb.widgets import ParticleGallery, TrajectoryPlayer, VolumeViewer

    namespace = dict(np=np, from_dict=from_dict, grid_rotations=grid_rotations, load_run=load_run,
                     read_particles=read_particles, write_particles_star=write_particles_star,
                     write_volume=write_volume, SlurmOptions=SlurmOptions, SimulationConfig=SimulationConfig,
                     TrainConfig=TrainConfig, ParticleGallery=ParticleGallery, TrajectoryPlayer=TrajectoryPlayer,
                     VolumeViewer=VolumeViewer)
    with pytest.raises(CryoVAEError) as info:
        eval(_fill(case.input, paths), namespace)  # the table's own literal calls, not user input
    shown = f"{type(info.value).__name__}: {info.value}"
    assert expected.fullmatch(shown), f"\n{shown}\n!~ {expected.pattern}"


if __name__ == "__main__":
    DOC.write_text(render_doc())
    print(f"wrote {DOC} ({len(CASES)} cases)")
