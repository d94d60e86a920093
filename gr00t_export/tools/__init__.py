"""Commands around a build: bench (and its --grid), features, inspect, pack."""
