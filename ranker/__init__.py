"""Learning side of opensesame-predictor: workflow data, features, the LightGBM ranker."""
