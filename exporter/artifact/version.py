"""The version of seqexport, recorded in every manifest."""

VERSION = "0.1.0"
