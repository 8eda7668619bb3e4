"""One blueprint per resource: seed, start/stop, network (add/assign), JSON API, dashboard."""
