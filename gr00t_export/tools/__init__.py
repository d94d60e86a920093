"""Commands around a build: bench, inspect, pack."""
