"""The domain core, shared by serving and training: the spec model, one text vocabulary, candidate
generation, the runtime halves of the priors, features, the scorer, explanations and parameter
filling, settings and errors. Plain Python and numpy: it imports no Ray, no web framework, no
SQLite, and nothing of ``deployments``, ``ranker`` or ``tools`` (tests/test_layers.py)."""
