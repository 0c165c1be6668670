"""Site data: the queue configuration (sites table and its versions), brokerage over it, the configurator."""
