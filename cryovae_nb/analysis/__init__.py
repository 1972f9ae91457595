"""Analysis of what the VAE produced, one module per subject (import from the module; this package
file imports nothing, so importing one subject never pulls in another's dependencies):

* ``fsc`` -- Fourier shell correlation (thesis eq. 2.64), resolution at 0.5 and 0.143 in Å.
* ``align`` -- rigid 3D alignment by cross-correlation, trying the mirror image, and flipping
  decoded volumes to one hand (§4.1). Rotating and mirroring one volume: ``cryovae_nb.volumes``.
* ``latent`` -- ``latent_statistics`` (thesis Table 3.1), ``embed`` (PCA / UMAP / t-SNE, fitted on
  a seeded sample and every other point placed by its nearest sampled neighbours),
  ``kmeans``, ``latent_range``, ``write_cluster_selections``; umap is imported only when asked
  for, because it pulls in TensorFlow.
* ``series`` -- ``decode_volumes``, ``traversal_series``, ``interpolation_series``,
  ``save_series``: volume series through any ``decode(z) -> volumes`` callable, so no analysis
  module imports the model.
* ``selections`` -- set operations on selected rows (add, subtract, intersect, invert) and the
  selections an explorer makes: lasso polygon, box, latent or STAR-column range, label values.
* ``paths`` -- motions along paths: a k-nearest-neighbour graph of the latents, the shortest path
  between two particles through dense regions, paths through drawn points, resampled evenly and
  decoded (``path_volumes``).
* ``screen`` -- ``screen_particles``: flag empty or broken particles (thesis §3.4.4);
  ``write_screen_selections`` writes keep / reject as subsets of the original STAR.
* ``report`` -- ``report(run)``: the report folder ``cryovae analyze`` writes (latent maps, cluster
  and PC volumes, movies, screening, FSC, selections, ChimeraX script, index.html, notebooks);
  its parts in ``report_parts``, its pictures in ``report_figures``, its text files in ``report_pages``.
* Selections go back to RELION through ``cryovae_nb.selection.write_selection``.
* ``cryovae fsc`` is cryovae_nb.commands.fsc.

Headless (numpy / scipy / scikit-learn / umap-learn). Volumes follow cryovae_nb/geometry.py:
arrays ``V[z, y, x]``, coordinates ``r = (x, y, z)`` centred on voxel ``n // 2``.
"""
