"""Running a sweep: the plan of points, the runner and its worker processes, one point's measurement
and the workload it times."""
