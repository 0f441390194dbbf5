"""Layer 0, the plumbing: atomic files and digests, devices / precision / seeds, console
output, CPU allocation and job records, checkpoint I/O, where the YAML configs live."""
