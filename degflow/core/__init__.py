"""Layer 0, the math: scales and their labels, the scale <-> time map, spline paths, ODE
solvers, losses, resizing. Pure functions over tensors; nothing here reads a file."""
