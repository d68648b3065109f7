"""What composes the floors below: a recipe run into a folder (`pipelines`), `compare`,
`analyze` and the table of recipes the CLI is built from. The only floor that imports
soups, the store and the analysis together."""
