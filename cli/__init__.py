"""The `pandaes` command line: run components, submit, inspect and replay."""
