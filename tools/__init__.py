"""Tools that are not DVC stages: comparing experiments, inspecting the store, generating text,
writing params.yaml from a preset. Each is a Typer `main`, also a subcommand of `hyena-distill`."""
