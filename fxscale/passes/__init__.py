"""Graph passes: width rewriting, resolution scaling, verification."""
