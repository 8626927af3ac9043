"""Pipeline stages: one thin Typer script per DVC stage, reading params.yaml and calling `hyena`."""
