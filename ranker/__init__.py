"""Training: workflow data, synthetic sequences, fitting and evaluating the ranker, the priors'
statistics, retraining from outcomes and the model registry. Imports :mod:`core`, never
:mod:`deployments` or :mod:`tools`; the shipped artefacts are in ``ranker/models/``."""
