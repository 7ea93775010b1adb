# The reverse of jupyter: each component's clean undoes exactly what that component did.
# Notebooks (root_dir) are kept; packages and accounts go only when pillar `clean` says so.
include:
  - jupyter.clean.nginx
  - jupyter.clean.acme
  - jupyter.clean.supervisor
  - jupyter.clean.config
  - jupyter.clean.package
  - jupyter.clean.record
