"""mqtt stage."""
