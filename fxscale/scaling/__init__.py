"""HACScale: importance, power-law importance predictor, compound/alpha search, greedy width scaling, baselines."""
