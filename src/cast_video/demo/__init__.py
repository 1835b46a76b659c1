"""`cast-video demo`: a compositional moving-digits benchmark that runs the whole CAST story on a CPU."""
