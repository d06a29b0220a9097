"""divims' Grafana dashboards: `generate.py` writes dashboards/*.json, `queries.py` lists their PromQL."""
