"""Repository upkeep, kept out of the installed plugin.

- :mod:`tools.upkeep.gpu_kit`: the offline installer kit for the GPU machine
  (standard library only);
- :mod:`tools.upkeep.model_index`: ``configs/<family>/metafile.yml`` and
  ``model-index.yml``;
- :mod:`tools.upkeep.docs_tables`: generated tables between markers in docs/.

Nothing is imported here, so that ``from tools.upkeep import gpu_kit`` runs on a
machine without torch or mmcv.
"""
