"""CLI command modules: each module here defines `register(app: typer.Typer) -> None`.

`pipeline/cli.py` imports every module in this package, so a stage adds its commands (`caption`,
`parse`, `shard`, ...) by adding one file, without editing the main CLI.
"""
