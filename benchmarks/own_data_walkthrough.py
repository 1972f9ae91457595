"""The own-data walk-through of issue #12, timed: a RELION-style particle set through notebooks
01, 02, 04 and 05 with one edit (notebook 01's ``STAR_FILE``), as a user steps through them.

The "own data" is the project's simulator at issue #12's setting (hinge phantom, 128 px, 1.5 Å/px,
300 kV, Cs 2.7 mm, amplitude contrast 0.1, defocus 1.0-2.5 µm with astigmatism, SNR 0.05) written
the way RELION's extraction writes particles: contrast inverted (protein white), poses in the STAR
file as from a consensus Refine3D. Nothing tells the notebooks it is simulated: they must find the
contrast, crop to 64 px, pick the CTF model and train with known poses. Afterwards the figures are
taken against the simulator's truth: the contrast verdict, the model chosen, |Spearman rho| and
cross-validated kNN R^2 of the hinge angle from the latent, and notebook 04's FSC against the
reference map given to it (the truth's middle conformation, standing for a consensus map).

    python benchmarks/own_data_walkthrough.py [--n-particles 4000] [--train-s 600] [--out DIR]
"""
from __future__ import annotations

import argparse
import json
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]


def _stream(nb) -> str:
    return "\n".join(o.get("text", "") for c in nb.cells if c.cell_type == "code"
                     for o in c.get("outputs", []) if o.get("output_type") == "stream")


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n-particles", type=int, default=4000)
    ap.add_argument("--box", type=int, default=128)
    ap.add_argument("--pixel-size", type=float, default=1.5)
    ap.add_argument("--snr", type=float, default=0.05)
    ap.add_argument("--train-s", type=float, default=600, help="notebook 02's TRAIN_BUDGET_S")
    ap.add_argument("--out", default=None, help="working folder (default: a temporary one)")
    ap.add_argument("--seed", type=int, default=0)
    args = ap.parse_args(argv)

    from cryovae_nb.heterogeneity import motion_recovery
    from cryovae_nb.inference import Encoding
    from cryovae_nb.io import read_particles, write_stack
    from cryovae_nb.synthetic import SimulationConfig, simulate
    from cryovae_nb.tutorial.notebooks import execute_notebook

    out = Path(args.out or tempfile.mkdtemp(prefix="walkthrough_")).resolve()
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    ds = simulate(SimulationConfig(phantom="hinge", box=args.box, n_particles=args.n_particles, snr=args.snr,
                                   shift_std_px=2.0, ctf=True, defocus_range=(10000.0, 25000.0),
                                   astigmatism=1000.0, pixel_size=args.pixel_size, seed=args.seed),
                  out / "sim", progress=False)
    # as RELION extracts them: protein white
    relion = out / "Extract"
    relion.mkdir(exist_ok=True)
    images = read_particles(ds.star).images[np.arange(ds.n_particles)]
    write_stack(relion / ds.stack.name, -np.asarray(images), args.pixel_size)
    (relion / "run_data.star").write_text(ds.star.read_text())
    mid = sorted((ds.out_dir / "volumes").glob("*.mrc"))
    reference = str(mid[len(mid) // 2])
    print(f"data: {ds.n_particles} particles, {args.box} px, {args.pixel_size} Å/px, SNR {args.snr}, "
          f"contrast inverted as RELION writes it ({time.perf_counter() - t0:.0f} s to simulate)", flush=True)

    work = out / "walk"
    work.mkdir(exist_ok=True)
    common = {"WORKDIR": "project"}
    steps = [
        ("01_preprocess.ipynb", {**common, "STAR_FILE": str(relion / "run_data.star")}),  # the one edit
        ("02_train.ipynb", {**common, "TRAIN_BUDGET_S": args.train_s}),
        ("04_evaluate.ipynb", {**common, "REFERENCE_MAP": reference}),  # a consensus map stands in
        ("05_latent_landscape.ipynb", common),
    ]
    times, texts = {}, {}
    for name, params in steps:
        t = time.perf_counter()
        nb = execute_notebook(ROOT / "notebooks" / name, params, work, timeout=int(args.train_s) + 3600)
        times[name] = time.perf_counter() - t
        texts[name] = _stream(nb)
        print(f"{name}: {times[name]:.0f} s", flush=True)

    project = work / "project"
    # the cluster user's path: the report folder of the run, from the command line

    run_dir = next(project.glob("run_*"))
    t = time.perf_counter()
    subprocess.run([sys.executable, "-m", "cryovae_nb.cli", "analyze", str(run_dir), "--reference", reference],
                   check=True, cwd=work, stdout=subprocess.DEVNULL)
    times["cryovae analyze"] = time.perf_counter() - t
    print(f"cryovae analyze: {times['cryovae analyze']:.0f} s", flush=True)
    verdict = next((ln for ln in texts["01_preprocess.ipynb"].splitlines() if ln.startswith("contrast")), "?")
    config = json.loads(next(project.glob("run_*/config.json")).read_text())
    loss = config["model"]["loss"]
    enc = Encoding.load(project / "landscape" / "encoding.npz")
    t_true = np.load(ds.truth_file)["t"]  # notebook 05 encodes every particle, in order
    assert len(enc) == len(t_true), (len(enc), len(t_true))
    motion = motion_recovery(enc.z_mean, t_true)
    fsc = re.findall(r"FSC[^\n]*", texts["04_evaluate.ipynb"])
    print("\n| step | wall time |\n| --- | --- |")
    for name in times:
        print(f"| {name} | {times[name]:.0f} s |")
    print(f"| total | {sum(times.values()):.0f} s |")
    print(f"\ncontrast: {verdict}")
    print(f"model: ctf={loss.get('ctf')}, link={loss.get('link')}, pose mode {config['model']['pose']['mode']}, "
          f"trained to {sorted(next(project.glob('run_*')).glob('checkpoints/step_*'))[-1].name}")
    print(f"latent vs hinge angle: |rho| {motion['spearman_pc']:.2f}, kNN R^2 {motion['knn_r2']:.2f}")
    for line in fsc:
        print(f"notebook 04: {line.strip()}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
