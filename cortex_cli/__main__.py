from cortex_cli.main import cli

cli()
