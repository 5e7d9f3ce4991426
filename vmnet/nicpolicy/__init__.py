"""Per-NIC policy: each feature a module owning its up, down and check steps."""
