"""Serving side of opensesame-predictor: the Serve deployments and the plain classes they wrap."""
