"""The results table: its schema (the point key, the columns, the metric names) and the store that
writes it atomically beside a metadata sidecar."""
