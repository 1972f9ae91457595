"""Notebook viewers built on ipywidgets 8, nglview and plotly FigureWidget.

Only notebooks import this package; the numerical modules never do. Every widget takes plain
inputs (arrays, MRC paths, callables, objects with the documented attributes), so it works the
same on a model's output, a file from RELION, or a synthetic phantom.
"""
from cryovae_nb.widgets.explorer import LatentExplorer
from cryovae_nb.widgets.fsc import fsc_figure
from cryovae_nb.widgets.gallery import ParticleGallery
from cryovae_nb.widgets.images import comparison_png, overlay_rgb
from cryovae_nb.widgets.monitor import TrainingMonitor
from cryovae_nb.widgets.trajectory import TrajectoryPlayer
from cryovae_nb.widgets.volume import LinkedViews, VolumeViewer, slice_planes

__all__ = ["VolumeViewer", "LinkedViews", "ParticleGallery", "TrainingMonitor", "LatentExplorer", "TrajectoryPlayer",
           "fsc_figure", "overlay_rgb", "comparison_png", "slice_planes"]
