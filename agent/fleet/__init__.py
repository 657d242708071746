"""A fleet on one queue: the agents that consume it, registered in the ledger's table."""
