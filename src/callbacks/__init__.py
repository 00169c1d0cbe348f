"""seglab's Lightning callbacks, one per file; conf/callbacks/default.yaml lists which a run uses."""
