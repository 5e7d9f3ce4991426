"""vmnetd: the resident daemon (server, doors, policy) and the client every door uses."""
