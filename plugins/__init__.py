"""Experiment-specific behaviour (data placement, output registration) behind small interfaces."""
