"""Clock-driven services: rules that fire because time passed (timeouts, sweeps), run by the daemon."""
