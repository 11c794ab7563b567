"""The `seqexport` command line: `app` registers one module per command group; `render` is what they share."""
