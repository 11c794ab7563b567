"""`seqexport serve`: a local server speaking TF Serving's gRPC and REST APIs over a base folder."""
