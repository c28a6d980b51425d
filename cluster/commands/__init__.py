"""One module per `aha` command, named after it; each drives the roles (cluster/roles) through the
run scaffold (cluster/run) where it trains."""
