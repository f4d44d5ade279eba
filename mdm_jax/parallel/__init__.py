"""Device meshes, sharding rules and multi-process start-up."""
