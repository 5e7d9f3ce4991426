"""Network kinds beyond the bare bridge: each module owns its up, down and check steps."""
