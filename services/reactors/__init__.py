"""Event reactors: services that consume panda.job-events in their own group and answer with commands."""
