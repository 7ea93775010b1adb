# Jupyter behind nginx under supervisor. Each part can be applied alone.
include:
  - jupyter.package
  - jupyter.config
  - jupyter.supervisor
  - jupyter.nginx
  - jupyter.acme
  - jupyter.removed
  - jupyter.record
