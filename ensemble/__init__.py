"""Ensembles of a study's trials, and the label-noise audit their OOF predictions allow.

- ``python -m ensemble.build``: candidate selection, stackers compared over the study's folds
  (best single, mean, Caruana hill climbing, logistic regression, LightGBM), the chosen one
  written as ``runs/<study>/ensemble/<name>/`` under the trial artefact contract.
- ``python -m ensemble.audit``: likely mislabelled training images, ``runs/<study>/audit/``.

Modules: ``candidates`` (load, refuse, select, join on image_id), ``stackers`` (the registry),
``calibration`` (temperature scaling), ``cv`` (honest cross-validation, one-SE choice),
``plots``, ``audit``, ``build``, ``synthetic`` (studies for tests and benchmarks).
"""
