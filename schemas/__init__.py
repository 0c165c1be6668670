"""Contracts: the messages on every topic, and PanDA's JobSpec/FileSpec. Nothing here imports the rest."""
