"""What a run is: its directory layout, checkpoints, train state, stages and growth."""
